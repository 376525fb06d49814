// The OpenAI HTTP API through real processes: the official OpenAI JavaScript SDK (npm `openai`, run by
// openai_sdk_check.mjs) against `tpserve serve`, its greedy text compared with the gRPC API's; and raw-socket
// checks of the HTTP server itself: 64 idle or byte-trickling connections do not keep /ready from answering,
// and hostile bodies (100 MB, malformed JSON, wrong types, invalid UTF-8, deep nesting) get a 4xx, never a crash.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;
using json = nlohmann::json;

const char kSdkVersion[] = "openai@4.95.0";  // v5+ needs node >= 22 (Debian 12 ships 18; CI images 20)

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{5, 0};  // every read in these tests is bounded
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return fd;
}

void SendAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

// Reads until the peer closes or the bounded read times out.
std::string ReadAll(int fd) {
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

struct HttpResult {
  int status = -1;
  std::string body;
};

HttpResult Exchange(int port, const std::string& raw) {
  HttpResult r;
  int fd = Connect(port);
  if (fd < 0) return r;
  SendAll(fd, raw);
  std::string resp = ReadAll(fd);
  close(fd);
  if (resp.rfind("HTTP/1.1 ", 0) == 0) r.status = std::atoi(resp.c_str() + 9);
  size_t b = resp.find("\r\n\r\n");
  if (b != std::string::npos) r.body = resp.substr(b + 4);
  return r;
}

HttpResult Post(int port, const std::string& path, const std::string& body) {
  return Exchange(port, absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
                                     "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n\r\n", body));
}

HttpResult Get(int port, const std::string& path) {
  return Exchange(port, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

// The OpenAI error shape; returns error.param ("" for null).
std::string ErrorParam(const HttpResult& r) {
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.contains("error") || !j["error"]["message"].is_string()) {
    ADD_FAILURE() << "not an OpenAI error body: " << r.body;
    return "?";
  }
  return j["error"]["param"].is_string() ? j["error"]["param"].get<std::string>() : "";
}

TEST(OpenAiHttpTest, IdleAndTricklingConnectionsDoNotDelayProbes) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  for (int port : {server.metrics_port(), server.http_port()}) {
    // 32 connections that never send a byte, 32 that send half a request line a byte at a time.
    std::vector<int> idle, trickle;
    for (int i = 0; i < 32; ++i) idle.push_back(Connect(port));
    for (int i = 0; i < 32; ++i) trickle.push_back(Connect(port));
    for (int fd : idle) ASSERT_GE(fd, 0);
    for (int fd : trickle) ASSERT_GE(fd, 0);
    std::atomic<bool> stop{false};
    std::thread trickler([&] {
      const std::string line = "GET /ready HTTP/1.1\r\nHost: x\r\n";
      for (size_t i = 0; !stop && i < line.size(); ++i) {
        for (int fd : trickle) send(fd, &line[i], 1, MSG_NOSIGNAL);
        for (int t = 0; t < 10 && !stop; ++t) usleep(20000);
      }
    });
    for (int round = 0; round < 3; ++round) {
      int fd = Connect(port);
      ASSERT_GE(fd, 0);
      timeval one_second{1, 0};  // the bound the issue asks for: /ready within 1 s
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &one_second, sizeof(one_second));
      SendAll(fd, "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
      std::string resp = ReadAll(fd);
      close(fd);
      EXPECT_EQ(resp.rfind("HTTP/1.1 200", 0), 0u) << "port " << port << ": /ready did not answer within 1 s with 64 "
                                                   << "idle/trickling connections open; got: " << resp;
      EXPECT_NE(resp.find("ready"), std::string::npos);
      HttpResult health = Get(port, "/health");
      EXPECT_EQ(health.status, 200);
    }
    stop = true;
    trickler.join();
    for (int fd : idle) close(fd);
    for (int fd : trickle) close(fd);
  }
  EXPECT_EQ(server.Stop(), 0);
}

TEST(OpenAiHttpTest, HostileBodiesGetA4xxNeverACrash) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const int port = server.http_port();
  struct Case {
    const char* name;
    std::string body;
    std::string param;
  };
  std::vector<Case> cases = {
      {"malformed JSON", "{\"prompt\": \"Once\",", "body"},
      {"not an object", "[1, 2, 3]", "body"},
      {"wrong type", "{\"prompt\": \"Once\", \"max_tokens\": \"many\"}", "max_tokens"},
      {"wrong type in a list", "{\"prompt\": \"Once\", \"stop\": [\"a\", 3]}", "stop[1]"},
      {"invalid UTF-8", "{\"prompt\": \"Once \xff\xfe\"}", "body"},
      {"lone surrogate", "{\"prompt\": \"Once \\ud800\"}", "body"},
      {"negative token id", "{\"prompt\": [1, -5]}", "prompt[1]"},
      {"token id out of vocabulary", "{\"prompt\": [1, 99999]}", "prompt"},
      {"n too large", "{\"prompt\": \"Once\", \"n\": 1000}", "n"},
      {"integer overflow", "{\"prompt\": \"Once\", \"max_tokens\": 1e300}", "max_tokens"},
      {"deep nesting", std::string(200000, '[') + std::string(200000, ']'), "body"},
      {"empty body", "", "body"},
  };
  for (const auto& c : cases) {
    HttpResult r = Post(port, "/v1/completions", c.body);
    EXPECT_EQ(r.status, 400) << c.name << ": " << r.body;
    EXPECT_EQ(ErrorParam(r), c.param) << c.name << ": " << r.body;
  }
  {
    HttpResult r = Post(port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}");
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(ErrorParam(r), "messages[0].role") << r.body;
  }
  // A 100 MB body: refused with 413 from its Content-Length, and the client still reads the answer.
  {
    int fd = Connect(port);
    ASSERT_GE(fd, 0);
    const size_t total = 100u << 20;
    SendAll(fd, absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n",
                             "Content-Length: ", total, "\r\n\r\n{\"prompt\": \""));
    const std::string chunk(1 << 20, 'a');
    for (size_t sent = 0; sent < total; sent += chunk.size()) {
      if (send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) break;  // the server may stop reading
    }
    std::string resp = ReadAll(fd);
    close(fd);
    EXPECT_EQ(resp.rfind("HTTP/1.1 413", 0), 0u) << resp.substr(0, 300);
    EXPECT_NE(resp.find("request_too_large"), std::string::npos) << resp.substr(0, 300);
  }
  // Not HTTP at all; an unknown path; a wrong method.
  EXPECT_EQ(Exchange(port, "HELLO THERE\r\n\r\n").status, 400);
  EXPECT_EQ(Get(port, "/v2/nothing").status, 404);
  EXPECT_EQ(Get(port, "/v1/completions").status, 405);
  // Still serving, and still right.
  HttpResult ok = Post(port, "/v1/completions", "{\"prompt\": \"Once upon a time\", \"max_tokens\": 4, \"temperature\": 0}");
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(server.PollExit(), -1) << server.ReadLog();
  EXPECT_EQ(server.Stop(), 0);
}

// The body field no_speculation (tpserve's extension, GenerateRequest.no_speculation) opts one request out of
// speculative decoding on a server that speculates: the server verifies no proposal for it, and its greedy text
// is the one the same request gets with speculation (which does propose: stories260K's stories repeat).
TEST(OpenAiHttpTest, NoSpeculationOptsOneRequestOut) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {"--speculative-method=ngram", "--num-speculative-tokens=4"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const std::string drafts = "tpserve:spec_decode_num_drafts_total{model_name=\"stories260K\"}";
  auto complete = [&](bool no_speculation) {
    json body = {{"prompt", "Once upon a time"}, {"max_tokens", 150}, {"temperature", 0}, {"ignore_eos", true},
                 {"no_speculation", no_speculation}};
    HttpResult r = Post(server.http_port(), "/v1/completions", body.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.contains("choices")) {
      ADD_FAILURE() << "not a completion: " << r.body;
      return std::string();
    }
    return j["choices"][0]["text"].get<std::string>();
  };
  const std::string plain = complete(true);
  EXPECT_FALSE(MetricValue(server.HttpGet("/metrics"), drafts) > 0) << "an opted-out request was speculated";
  const std::string speculated = complete(false);
  EXPECT_GT(MetricValue(server.HttpGet("/metrics"), drafts), 0) << "the control request proposed nothing";
  EXPECT_FALSE(plain.empty());
  EXPECT_EQ(speculated, plain);
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

// usage.speculative (gRPC Usage.speculative) in the OpenAI responses: the final usage of a non-streamed
// completion and of a streamed chat (include_usage) carries the request's own verify counts, equal to what
// the tpserve:spec_decode_* counters gained for it (the server serves nothing else meanwhile); a request that
// had no proposal verified (opted out) has no "speculative" object, as the gRPC message has none.
TEST(OpenAiHttpTest, UsageCarriesSpeculativeCounts) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {"--speculative-method=ngram", "--num-speculative-tokens=4"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const int port = server.http_port();
  auto counters = [&] {
    const std::string m = server.HttpGet("/metrics");
    auto get = [&](const std::string& name) {
      return static_cast<int>(MetricValue(m, "tpserve:spec_decode_" + name + "_total{model_name=\"stories260K\"}"));
    };
    return json{{"num_drafts", get("num_drafts")},
                {"num_draft_tokens", get("num_draft_tokens")},
                {"num_accepted_tokens", get("num_accepted_tokens")}};
  };
  auto gained = [](const json& before, const json& after) {
    json d;
    for (const auto& [k, v] : after.items()) d[k] = v.get<int>() - before[k].get<int>();
    return d;
  };
  auto check_counts = [](const json& usage, const json& expected, const std::string& what) {
    ASSERT_TRUE(usage.contains("speculative")) << what << ": no usage.speculative in " << usage.dump();
    const json& sp = usage["speculative"];
    EXPECT_EQ(sp, expected) << what;
    EXPECT_GT(sp["num_drafts"].get<int>(), 0) << what;
    EXPECT_LE(sp["num_accepted_tokens"].get<int>(), sp["num_draft_tokens"].get<int>()) << what;
    EXPECT_LT(sp["num_accepted_tokens"].get<int>(), usage["completion_tokens"].get<int>()) << what;
  };

  // Non-streamed completion.
  json before = counters();
  json body = {{"prompt", "Once upon a time"}, {"max_tokens", 150}, {"temperature", 0}, {"ignore_eos", true}};
  HttpResult r = Post(port, "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.body;
  check_counts(j["usage"], gained(before, counters()), "completion");

  // Streamed chat: the usage chunk (empty choices) at the end.
  before = counters();
  body = {{"messages", json::array({{{"role", "user"}, {"content", "Tell me a story about a cat."}}})},
          {"max_tokens", 150}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true},
          {"stream_options", {{"include_usage", true}}}};
  r = Post(port, "/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json usage;
  for (size_t at = r.body.find("data: {"); at != std::string::npos; at = r.body.find("data: {", at + 1)) {
    json chunk = json::parse(r.body.substr(at + 6, r.body.find('\n', at) - at - 6), nullptr, false);
    ASSERT_FALSE(chunk.is_discarded()) << r.body;
    if (chunk["choices"].empty()) usage = chunk["usage"];
  }
  ASSERT_TRUE(usage.is_object()) << "no usage chunk in " << r.body;
  check_counts(usage, gained(before, counters()), "streamed chat");

  // Opted out: nothing verified, no speculative object.
  body = {{"prompt", "Once upon a time"}, {"max_tokens", 150}, {"temperature", 0}, {"ignore_eos", true},
          {"no_speculation", true}};
  r = Post(port, "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  j = json::parse(r.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.body;
  EXPECT_FALSE(j["usage"].contains("speculative")) << j["usage"].dump();
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

// The gRPC API's greedy answer to a request, as {text, prompt_tokens}.
json GrpcAnswer(ServerProcess& server, const v1::GenerateRequest& req, const std::string& key) {
  auto stub = server.NewStub();
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + key);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateResponse resp;
  grpc::Status s = stub->Generate(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return {{"text", resp.text()}, {"prompt_tokens", resp.usage().prompt_tokens()}};
}

TEST(OpenAiSdkTest, OfficialJavaScriptClient) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  if (std::system("command -v node >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed; skipping the SDK test";
  // The SDK lives in the build directory, installed on first use (as tests/deploy does for its schemas).
  const std::string sdk_dir = BinDir() + "/../openai-sdk";
  const std::string nm = sdk_dir + "/node_modules";
  if (!std::ifstream(nm + "/openai/package.json")) {
    if (std::system("command -v npm >/dev/null 2>&1") != 0) GTEST_SKIP() << "npm is not installed; skipping the SDK test";
    std::string cmd = "timeout 300 npm install --prefix " + sdk_dir + " --no-audit --no-fund --silent " + kSdkVersion +
                      " >/dev/null 2>&1";
    std::system(cmd.c_str());
    if (!std::ifstream(nm + "/openai/package.json")) {
      GTEST_SKIP() << "npm could not install " << kSdkVersion << " into " << sdk_dir << " (offline?); skipping";
    }
  }
  ScopedTempDir dir("openai-sdk");
  const std::string key = "sdk-test-key";
  std::ofstream(dir.path + "/key") << key << "\n";
  ServerOptions o{model_dir, 1,
                  {"--api_key_file=" + dir.path + "/key", "--served_model_name=tiny-stories", "--max_num_seqs=4",
                   "--max_queued_requests=2", "--drain_timeout=60",
                   // the SDK script checks usage.speculative; output is the same with speculation
                   "--speculative-method=ngram"}};
  ServerProcess server(o);
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();

  // The same requests the script sends, over gRPC.
  v1::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Tell me a story about a cat.");
  chat.mutable_sampling()->set_temperature(0);
  chat.mutable_stopping()->set_max_new_tokens(24);
  v1::GenerateRequest completion;
  completion.set_prompt("Once upon a time");
  completion.mutable_sampling()->set_temperature(0);
  completion.mutable_stopping()->set_max_new_tokens(24);
  json expected = {{"chat", GrpcAnswer(server, chat, key)}, {"completion", GrpcAnswer(server, completion, key)}};

  const std::string expected_file = dir.path + "/expected.json";
  std::ofstream(expected_file) << expected.dump();
  const std::string out = dir.path + "/node.out";
  std::string cmd = absl::StrCat(
      "OPENAI_SDK_DIR='", nm, "' BASE_URL='http://127.0.0.1:", server.http_port(), "/v1' METRICS_URL='http://127.0.0.1:",
      server.metrics_port(), "/metrics' API_KEY='", key, "' MODEL=tiny-stories SERVER_PID=", server.pid(),
      " EXPECTED_FILE='", expected_file, "' timeout 300 node ", SourceDir(),
      "/tests/integration/openai_sdk_check.mjs > ", out, " 2>&1");
  int rc = std::system(cmd.c_str());
  std::string output = ReadFileOrDie(out);
  EXPECT_EQ(rc, 0) << output << "\nserver log:\n" << server.ReadLog();
  std::printf("%s", output.c_str());
  // The script's last check drained the server with SIGTERM: it exits 0 once in-flight requests finished.
  EXPECT_EQ(server.Stop(absl::Seconds(60)), 0) << server.ReadLog();
}

}  // namespace
}  // namespace tpserve::testing
