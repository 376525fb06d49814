// tpserve-bench --api openai end to end against a small OpenAI-compatible server inside this test (cpp-httplib):
// it checks what the bench sends (model, stream_options, token-id prompts, the API key) and answers with SSE
// streams of known content, including an event split across two writes, usage in the last chunk, error
// responses in OpenAI's JSON shape, and a stream cut short. The bench's JSON report must say exactly that.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/util/bench_run.h"
#include "tests/util/test_env.h"

extern char** environ;

namespace tpserve::testing {
namespace {

using nlohmann::json;

// How the fake answers the i-th generation request (0-based, in arrival order).
enum class Answer { kStream, kRateLimited, kBadRequest, kCutShort, kEndless };

class FakeOpenAiServer {
 public:
  explicit FakeOpenAiServer(std::function<Answer(int)> plan) : plan_(std::move(plan)) {
    server_.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      res.set_content(R"({"object":"list","data":[{"id":"fake-model","object":"model","max_model_len":512}]})",
                      "application/json");
    });
    for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
      const bool chat = std::string(path) == "/v1/chat/completions";
      server_.Post(path, [this, chat](const httplib::Request& req, httplib::Response& res) { Generate(chat, req, res); });
    }
    server_.set_tcp_nodelay(true);  // each SSE write leaves at once, as a streaming server's must
    server_.set_keep_alive_max_count(1 << 20);  // connections close only when the client closes them
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeOpenAiServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  std::vector<json> bodies() {
    std::lock_guard<std::mutex> l(mu_);
    return bodies_;
  }
  // Distinct client TCP ports the generation requests came from: one per connection.
  size_t connections() {
    std::lock_guard<std::mutex> l(mu_);
    return client_ports_.size();
  }
  // Waits up to `timeout` until `n` generation requests have arrived.
  bool WaitForRequests(size_t n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return bodies_.size() >= n; });
  }
  std::string api_key;  // non-empty: requests must carry "Authorization: Bearer <api_key>"

 private:
  bool Authorized(const httplib::Request& req, httplib::Response& res) {
    if (api_key.empty() || req.get_header_value("Authorization") == "Bearer " + api_key) return true;
    res.status = 401;
    res.set_content(R"({"error":{"message":"Incorrect API key provided","type":"invalid_request_error",)"
                    R"("param":null,"code":"invalid_api_key"}})",
                    "application/json");
    return false;
  }

  void Generate(bool chat, const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    const json body = json::parse(req.body, nullptr, false);
    int index;
    {
      std::lock_guard<std::mutex> l(mu_);
      index = static_cast<int>(bodies_.size());
      bodies_.push_back(body);
      client_ports_.insert(req.remote_port);
    }
    cv_.notify_all();
    const Answer answer = plan_(index);
    if (answer == Answer::kRateLimited) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_content(R"({"error":{"message":"the request queue is full","type":"rate_limit_exceeded",)"
                      R"("param":null,"code":"queue_full"}})",
                      "application/json");
      return;
    }
    if (answer == Answer::kBadRequest || !body.is_object() || body.value("stream", false) != true ||
        !body.contains("stream_options") || body["stream_options"].value("include_usage", false) != true) {
      res.status = 400;
      res.set_content(R"({"error":{"message":"temperature must be in [0, 2]","type":"invalid_request_error",)"
                      R"("param":"temperature","code":null}})",
                      "application/json");
      return;
    }
    if (answer == Answer::kEndless) {  // a token every 5 ms until the client goes away
      res.set_chunked_content_provider("text/event-stream", [](size_t, httplib::DataSink& sink) {
        const std::string e = R"(data: {"choices":[{"index":0,"text":" t"}]})" "\n\n";
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return sink.write(e.data(), e.size());
      });
      return;
    }
    const int max_tokens = body.value("max_tokens", 0);
    const int prompt_tokens = chat ? 10 : static_cast<int>(body["prompt"].is_array() ? body["prompt"].size() : 3);
    // Known content: token k is the text " t<k>". Each event is one write, except token 1's, which is split
    // in the middle of its JSON across two writes.
    std::vector<std::string> writes;
    auto chunk = [&](const json& choice_delta, const json& finish) {
      json c = {{"id", "cmpl-1"}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"model", "fake-model"}};
      json choice = {{"index", 0}, {"finish_reason", finish}};
      if (chat) {
        choice["delta"] = choice_delta;
      } else {
        choice["text"] = choice_delta.value("content", "");
      }
      c["choices"] = json::array({choice});
      return "data: " + c.dump() + "\n\n";
    };
    if (chat) writes.push_back(chunk({{"role", "assistant"}, {"content", ""}}, nullptr));
    for (int k = 0; k < max_tokens; ++k) {
      const std::string e = chunk({{"content", " t" + std::to_string(k)}},
                                  k + 1 == max_tokens ? json("length") : json(nullptr));
      if (k == 1) {
        writes.push_back(e.substr(0, e.size() / 2));
        writes.push_back(e.substr(e.size() / 2));
      } else {
        writes.push_back(e);
      }
    }
    if (answer == Answer::kCutShort) {
      writes.resize(writes.size() / 2);  // the connection ends mid-stream: no usage, no [DONE]
    } else {
      json usage = {{"id", "cmpl-1"}, {"choices", json::array()},
                    {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", max_tokens},
                               {"total_tokens", prompt_tokens + max_tokens},
                               {"prompt_tokens_details", {{"cached_tokens", 0}}}}}};
      writes.push_back("data: " + usage.dump() + "\n\n");
      writes.push_back("data: [DONE]\n\n");
    }
    res.set_chunked_content_provider("text/event-stream", [writes](size_t, httplib::DataSink& sink) {
      for (const std::string& w : writes) {
        if (!sink.write(w.data(), w.size())) return false;
      }
      sink.done();
      return true;
    });
  }

  std::function<Answer(int)> plan_;
  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<json> bodies_;
  std::set<int> client_ports_;
};

TEST(OpenAiBenchTest, CompletionsSendTokenIdsAndReportWhatTheServerStreamed) {
  TP_REQUIRE_SHARED(model, "models/stories260K");
  FakeOpenAiServer fake([](int) { return Answer::kStream; });
  BenchRun run = RunTpserveBench(absl::StrCat("--api openai --url ", fake.url(), "/v1 --tokenizer ", model,
                                       " --num-requests 6 --concurrency 2 --input-len 40 --output-len 5 "
                                       "--len-dist uniform --len-range 0.5 --seed 11"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ASSERT_TRUE(run.report.is_object()) << run.output;
  const auto& s = run.report["summary"];
  EXPECT_EQ(s["completed"], 6) << run.output;
  EXPECT_EQ(s["failed"], 0) << run.output;
  EXPECT_EQ(run.report["config"]["api"], "openai");
  EXPECT_EQ(run.report["config"]["model"]["name"], "fake-model");  // the first of GET /v1/models

  // What the server received: the model's BOS then real-text token ids, as many as the bench says it sent.
  const std::vector<json> bodies = fake.bodies();
  ASSERT_EQ(bodies.size(), 6u);
  std::vector<size_t> sent;
  for (const json& b : bodies) {
    EXPECT_EQ(b["model"], "fake-model");
    EXPECT_EQ(b["stream"], true);
    EXPECT_EQ(b["stream_options"]["include_usage"], true);
    ASSERT_TRUE(b["prompt"].is_array()) << b.dump();
    EXPECT_EQ(b["prompt"][0], 1) << b.dump();  // stories260K's BOS
    sent.push_back(b["prompt"].size());
  }
  int64_t output = 0;
  for (const auto& r : run.report["requests"]) {
    EXPECT_EQ(r["status"], "OK") << r.dump();
    // Usage as the server reported it; every content chunk (one split across writes included) counted once.
    EXPECT_EQ(r["prompt_tokens"], r["input_len_sent"]) << r.dump();
    EXPECT_EQ(r["completion_tokens"], r["output_len_asked"]) << r.dump();
    EXPECT_EQ(r["stream_tokens"], r["completion_tokens"]) << r.dump();
    EXPECT_EQ(r["finish_reason"], 1) << r.dump();  // "length"
    EXPECT_LE(r["ttft_ms"].get<double>(), r["e2e_ms"].get<double>()) << r.dump();
    EXPECT_NE(std::find(sent.begin(), sent.end(), r["input_len_sent"].get<size_t>()), sent.end()) << r.dump();
    output += r["completion_tokens"].get<int64_t>();
  }
  EXPECT_EQ(s["total_output_tokens"].get<int64_t>(), output);
  EXPECT_EQ(s["stream_output_tokens"].get<int64_t>(), output);
  // Inter-token gaps: one per content chunk after the first, per request.
  EXPECT_EQ(run.report["itl_ms"]["count"].get<int64_t>(), output - 6);
  // Two in flight at most: two workers, each reusing its keep-alive connection for the next request (six
  // requests without reuse would open six). The startup GET /v1/models may hold a third: whether a worker
  // picks that connection up depends on timing (seen under a loaded machine).
  EXPECT_LE(fake.connections(), 3u);
}

TEST(OpenAiBenchTest, ChatDatasetWithApiKey) {
  FakeOpenAiServer fake([](int) { return Answer::kStream; });
  fake.api_key = "s3cret";
  const std::string dir = MakeTempDir("openai-key");
  std::ofstream(dir + "/key") << "s3cret\n";
  std::ofstream(dir + "/wrong") << "nope\n";
  const std::string dataset = SourceDir() + "/data/bench/sample_chat.jsonl";
  const std::string flags = absl::StrCat("--api openai --endpoint chat --url ", fake.url(), " --model fake-model ",
                                         "--num-requests 4 --concurrency 2 --output-len 3 --dataset ", dataset);
  BenchRun run = RunTpserveBench(flags + " --api-key-file " + dir + "/key");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.report["summary"]["completed"], 4) << run.output;
  for (const json& b : fake.bodies()) {
    ASSERT_TRUE(b["messages"].is_array()) << b.dump();
    EXPECT_FALSE(b["messages"][0]["content"].get<std::string>().empty()) << b.dump();
  }
  for (const auto& r : run.report["requests"]) {
    EXPECT_EQ(r["prompt_tokens"], 10) << r.dump();
    EXPECT_EQ(r["stream_tokens"], r["completion_tokens"]) << r.dump();  // the role-only chunk is no token
  }
  // A wrong key fails before any load, with the server's message.
  run = RunTpserveBench(flags + " --api-key-file " + dir + "/wrong");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("HTTP 401: Incorrect API key provided"), std::string::npos) << run.output;
}

TEST(OpenAiBenchTest, ErrorsAreCountedByHttpStatusWithTheServersMessage) {
  TP_REQUIRE_SHARED(model, "models/stories260K");
  // Requests 1 and 4 hit a full queue, 2 is refused as bad, 5 is cut short; concurrency 1 keeps the order.
  FakeOpenAiServer fake([](int i) {
    return i == 1 || i == 4 ? Answer::kRateLimited
           : i == 2         ? Answer::kBadRequest
           : i == 5         ? Answer::kCutShort
                            : Answer::kStream;
  });
  BenchRun run = RunTpserveBench(absl::StrCat("--api openai --url ", fake.url(), " --tokenizer ", model,
                                       " --num-requests 7 --concurrency 1 --input-len 20 --output-len 4"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto& s = run.report["summary"];
  EXPECT_EQ(s["completed"], 3) << run.output;
  EXPECT_EQ(s["failed"], 4) << run.output;
  EXPECT_EQ(s["failed_by_code"], json::parse(R"({"HTTP 429": 2, "HTTP 400": 1, "UNKNOWN": 1})")) << s.dump();
  const auto& rows = run.report["requests"];
  ASSERT_EQ(rows.size(), 7u);
  EXPECT_EQ(rows[1]["error"], "HTTP 429: the request queue is full (type rate_limit_exceeded, code queue_full)");
  EXPECT_EQ(rows[2]["error"],
            "HTTP 400: temperature must be in [0, 2] (type invalid_request_error, param temperature)");
  EXPECT_NE(rows[5]["error"].get<std::string>().find("without a chunk carrying usage"), std::string::npos)
      << rows[5].dump();
  EXPECT_NE(run.output.find("HTTP 429:"), std::string::npos) << run.output;  // in the table
}

// Ctrl-C while streams are open: the blocked HTTP reads are shut, the in-flight requests count as CANCELLED,
// and the partial report is still written.
TEST(OpenAiBenchTest, SigintCancelsOpenStreams) {
  FakeOpenAiServer fake([](int) { return Answer::kEndless; });
  const std::string dir = MakeTempDir("openai-int");
  const std::string dataset = SourceDir() + "/data/bench/sample_chat.jsonl";
  std::vector<std::string> argv_s = {BinDir() + "/tpserve-bench", "--api", "openai", "--url", fake.url(),
                                     "--dataset", dataset, "--endpoint", "chat", "--num-requests", "100",
                                     "--concurrency", "3", "--json", dir + "/report.json"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, (dir + "/log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  const bool streaming = fake.WaitForRequests(3, std::chrono::seconds(30));
  kill(pid, SIGINT);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(streaming) << ReadFileOrDie(dir + "/log");
  ASSERT_TRUE(WIFEXITED(st)) << ReadFileOrDie(dir + "/log");
  EXPECT_EQ(WEXITSTATUS(st), 130);
  const json report = json::parse(ReadFileOrDie(dir + "/report.json"), nullptr, false);
  ASSERT_TRUE(report.is_object()) << ReadFileOrDie(dir + "/log");
  EXPECT_TRUE(report["summary"]["interrupted"].get<bool>());
  EXPECT_EQ(report["summary"]["failed_by_code"], json::parse(R"({"CANCELLED": 3})")) << report["summary"].dump();
}

TEST(OpenAiBenchTest, BadFlagsNameTheFlag) {
  BenchRun run = RunTpserveBench("--api openai --num-requests 1");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--api openai needs --url"), std::string::npos) << run.output;
  run = RunTpserveBench("--url http://127.0.0.1:1 --num-requests 1");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--url is for --api openai, not --api grpc"), std::string::npos) << run.output;
  run = RunTpserveBench("--api openai --url ftp://x --num-requests 1");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--url must start with http:// or https://"), std::string::npos) << run.output;
  FakeOpenAiServer fake([](int) { return Answer::kStream; });
  run = RunTpserveBench(absl::StrCat("--api openai --url ", fake.url(), " --num-requests 1"));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("give --tokenizer DIR"), std::string::npos) << run.output;
  run = RunTpserveBench(absl::StrCat("--api openai --url ", fake.url(), " --model other --dataset ", SourceDir(),
                                     "/data/bench/sample_chat.jsonl --num-requests 1"));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--model 'other' is not served at " + fake.url() + " (GET /v1/models lists: fake-model)"),
            std::string::npos)
      << run.output;
  run = RunTpserveBench(absl::StrCat("--api openai --url ", fake.url(), " --endpoint embeddings --num-requests 1"));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--endpoint must be chat or completions"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace tpserve::testing
