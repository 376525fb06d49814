// tpserve-bench end to end: a real `tpserve serve --tp 2` (stories260K) and the bench run as a subprocess. Its
// JSON report must agree with what the server itself counted (usage per request, /metrics counters) and its
// latency figures must be internally consistent.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/bench_run.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

extern char** environ;

namespace tpserve::testing {
namespace {

const char kGenTokens[] = "tpserve:generation_tokens_total{model_name=\"stories260K\"}";
const char kPromptTokens[] = "tpserve:prompt_tokens_total{model_name=\"stories260K\"}";
const char kPrefixHits[] = "tpserve:prefix_cache_hits_total{model_name=\"stories260K\"}";

// Runs tpserve-bench with `flags` against `address` and parses its report.
BenchRun RunBench(const std::string& address, const std::string& flags) {
  return RunTpserveBench(absl::StrCat("--server ", address, " ", flags));
}

class TpserveBenchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = SharedPath("models/stories260K");
    if (model.empty()) return;
    ServerOptions options;
    options.model_dir = model;
    options.tp = 2;
    options.extra_flags = {"--max_num_seqs=8", "--log_requests=false"};
    server_ = new ServerProcess(options);
    start_status_ = new absl::Status(server_->Start());
  }
  static void TearDownTestSuite() {
    if (server_ != nullptr) server_->Stop();
    delete server_;
    delete start_status_;
    server_ = nullptr;
    start_status_ = nullptr;
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "../shared/models/stories260K is absent; skipping";
    ASSERT_TRUE(start_status_->ok()) << start_status_->message() << "\n" << server_->ReadLog();
  }
  double Metric(const char* sample) const { return MetricValue(server_->HttpGet("/metrics"), sample); }

  static ServerProcess* server_;
  static absl::Status* start_status_;
};
ServerProcess* TpserveBenchTest::server_ = nullptr;
absl::Status* TpserveBenchTest::start_status_ = nullptr;

TEST_F(TpserveBenchTest, FortyRequestsMatchServerCounts) {
  const double gen_before = Metric(kGenTokens);
  const double prompt_before = Metric(kPromptTokens);
  ASSERT_FALSE(std::isnan(gen_before)) << server_->HttpGet("/metrics");
  BenchRun run = RunBench(server_->address(),
                          "--num-requests 40 --concurrency 4 --input-len 48 --output-len 24 --len-dist uniform "
                          "--len-range 0.5 --seed 7");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ASSERT_TRUE(run.report.is_object()) << run.output;
  const auto& s = run.report["summary"];
  EXPECT_EQ(s["completed"], 40) << run.output;
  EXPECT_EQ(s["failed"], 0) << run.output;
  EXPECT_GE(s["peak_concurrency"].get<int>(), 1);
  EXPECT_LE(s["peak_concurrency"].get<int>(), 4);

  for (const char* key : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    const auto& d = run.report[key];
    for (const char* stat : {"mean", "median", "p50", "p90", "p95", "p99", "max"}) {
      ASSERT_TRUE(d.contains(stat) && d[stat].is_number()) << key << "." << stat << " missing";
    }
    EXPECT_GT(d["count"].get<int>(), 0) << key;
    EXPECT_GT(d["p50"].get<double>(), 0) << key;
    EXPECT_LE(d["p50"].get<double>(), d["p90"].get<double>()) << key;
    EXPECT_LE(d["p90"].get<double>(), d["p95"].get<double>()) << key;
    EXPECT_LE(d["p95"].get<double>(), d["p99"].get<double>()) << key;
    EXPECT_LE(d["p99"].get<double>(), d["max"].get<double>()) << key;
    EXPECT_LE(d["mean"].get<double>(), d["max"].get<double>()) << key;
  }

  // Per request: the client's stream agrees with the server's usage and with what was asked for.
  ASSERT_EQ(run.report["requests"].size(), 40u);
  int64_t completion = 0, streamed = 0, prompt = 0;
  for (const auto& r : run.report["requests"]) {
    EXPECT_EQ(r["status"], "OK") << r.dump();
    EXPECT_LT(r["ttft_ms"].get<double>(), r["e2e_ms"].get<double>()) << r.dump();
    EXPECT_EQ(r["completion_tokens"], r["stream_tokens"]) << r.dump();
    EXPECT_EQ(r["completion_tokens"], r["output_len_asked"]) << r.dump();  // ignore_eos: exactly max_new_tokens
    EXPECT_EQ(r["prompt_tokens"], r["input_len_sent"]) << r.dump();
    EXPECT_EQ(r["prompt_tokens"], r["stream_prompt_ids"]) << r.dump();
    completion += r["completion_tokens"].get<int64_t>();
    streamed += r["stream_tokens"].get<int64_t>();
    prompt += r["prompt_tokens"].get<int64_t>();
  }
  EXPECT_EQ(s["total_output_tokens"].get<int64_t>(), completion);
  EXPECT_EQ(s["stream_output_tokens"].get<int64_t>(), streamed);
  EXPECT_EQ(s["total_input_tokens"].get<int64_t>(), prompt);
  EXPECT_DOUBLE_EQ(Metric(kGenTokens) - gen_before, static_cast<double>(streamed));
  EXPECT_DOUBLE_EQ(Metric(kPromptTokens) - prompt_before, static_cast<double>(prompt));

  // The timeline accounts for every request and every streamed token.
  int started = 0, finished = 0;
  int64_t timeline_tokens = 0;
  for (const auto& t : run.report["timeline"]) {
    started += t["requests_started"].get<int>();
    finished += t["requests_finished"].get<int>();
    timeline_tokens += t["output_tokens"].get<int64_t>();
  }
  EXPECT_EQ(started, 40);
  EXPECT_EQ(finished, 40);
  EXPECT_EQ(timeline_tokens, streamed);
  EXPECT_GT(run.report["client_overhead"]["callback_us_per_token"].get<double>(), 0);
}

// The same harness over the OpenAI HTTP API of the same server: every request's usage, the streamed chunks and
// the server's own counters agree (prompts go as token-id arrays, so the ids sent are the ids counted).
TEST_F(TpserveBenchTest, OpenAiApiMatchesServerCounts) {
  ASSERT_GT(server_->http_port(), 0);
  const double gen_before = Metric(kGenTokens), prompt_before = Metric(kPromptTokens);
  BenchRun run = RunTpserveBench(absl::StrCat("--api openai --url http://127.0.0.1:", server_->http_port(),
                                              " --tokenizer ", SharedPath("models/stories260K"),
                                              " --num-requests 12 --concurrency 3 --input-len 40 --output-len 16"
                                              " --len-dist uniform --len-range 0.5 --seed 21"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto& s = run.report["summary"];
  EXPECT_EQ(s["completed"], 12) << run.output;
  for (const auto& r : run.report["requests"]) {
    EXPECT_EQ(r["prompt_tokens"], r["input_len_sent"]) << r.dump();
    EXPECT_EQ(r["completion_tokens"], r["output_len_asked"]) << r.dump();
    EXPECT_EQ(r["stream_tokens"], r["completion_tokens"]) << r.dump();
  }
  EXPECT_DOUBLE_EQ(Metric(kGenTokens) - gen_before, s["total_output_tokens"].get<double>());
  EXPECT_DOUBLE_EQ(Metric(kPromptTokens) - prompt_before, s["total_input_tokens"].get<double>());
}

// Shared prefixes: what the bench reports as cached prompt tokens is what the server's prefix cache counted.
TEST_F(TpserveBenchTest, SharedPrefixReportsCachedTokens) {
  const double hits_before = Metric(kPrefixHits);
  BenchRun run = RunBench(server_->address(),
                          "--num-requests 8 --concurrency 1 --input-len 60 --output-len 4 --prefix-len 40 "
                          "--num-prefixes 2 --seed 3");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto& s = run.report["summary"];
  EXPECT_EQ(s["completed"], 8) << run.output;
  EXPECT_GT(s["cached_prompt_tokens"].get<int64_t>(), 0) << run.output;
  EXPECT_DOUBLE_EQ(Metric(kPrefixHits) - hits_before, s["cached_prompt_tokens"].get<double>());
}

// The built-in grounded workload (--dataset grounded): chat requests that each ask for a copy of part of their
// input, sized to --input-len and to the served model's 512-token context, generate the lengths the rows
// carry, and the server counts exactly those tokens.
TEST_F(TpserveBenchTest, GroundedDatasetRuns) {
  const double gen_before = Metric(kGenTokens);
  BenchRun run = RunBench(server_->address(), "--num-requests 6 --concurrency 2 --dataset grounded --input-len 120");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.report["summary"]["completed"], 6) << run.output;
  int64_t generated = 0;
  for (const auto& r : run.report["requests"]) {
    EXPECT_EQ(r["status"], "OK") << r.dump();
    EXPECT_GT(r["prompt_tokens"].get<int>(), 60) << r.dump();
    EXPECT_LE(r["prompt_tokens"].get<int>() + r["output_len_asked"].get<int>(), 512) << r.dump();
    EXPECT_EQ(r["completion_tokens"], r["output_len_asked"]) << r.dump();  // ignore_eos
    generated += r["completion_tokens"].get<int64_t>();
  }
  EXPECT_GT(generated, 6 * 8);
  EXPECT_DOUBLE_EQ(Metric(kGenTokens) - gen_before, static_cast<double>(generated));
}

// Open loop over the sample dataset (prompt and chat lines), plus --compare against the first run.
TEST_F(TpserveBenchTest, DatasetOpenLoopAndCompare) {
  const std::string dataset = SourceDir() + "/data/bench/sample_chat.jsonl";
  BenchRun first = RunBench(server_->address(), "--num-requests 12 --request-rate 50 --arrival poisson "
                                                "--burstiness 0.5 --output-len 8 --dataset " + dataset);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_EQ(first.report["summary"]["completed"], 12) << first.output;
  for (const auto& r : first.report["requests"]) EXPECT_GT(r["prompt_tokens"].get<int>(), 1) << r.dump();
  // Open loop: arrivals do not wait for completions (12 requests over ~0.25 s, each many engine steps long).
  EXPECT_GT(first.report["summary"]["peak_concurrency"].get<int>(), 1) << first.output;

  const std::string old_path = MakeTempDir("bench-old") + "/old.json";
  std::ofstream(old_path) << first.report.dump();
  BenchRun second = RunBench(server_->address(), "--num-requests 12 --request-rate 50 --arrival constant "
                                                 "--output-len 8 --dataset " + dataset + " --compare " + old_path);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("Compared with"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("Mean TTFT (ms)"), std::string::npos) << second.output;
}

TEST_F(TpserveBenchTest, BadInputNamesTheFlag) {
  BenchRun run = RunBench(server_->address(), "--num-requests 2 --dataset /nonexistent/x.jsonl");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--dataset '/nonexistent/x.jsonl' cannot be opened"), std::string::npos) << run.output;
  run = RunBench(server_->address(), "--num-requests 2 --input-len 500 --output-len 100");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("exceeds the model's context of 512"), std::string::npos) << run.output;
}

// Ctrl-C: stop sending, cancel in-flight requests, still print and write partial results.
TEST_F(TpserveBenchTest, SigintPrintsPartialResults) {
  const std::string json_path = MakeTempDir("bench-int") + "/report.json";
  const std::string log_path = json_path + ".log";
  const double gen_before = Metric(kGenTokens);
  std::vector<std::string> argv_s = {BinDir() + "/tpserve-bench", "--server", server_->address(),
                                     "--num-requests", "10000", "--concurrency", "2", "--input-len", "16",
                                     "--output-len", "200", "--json", json_path};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  // Wait (bounded) until the server has streamed tokens for this run, so requests are in flight.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up && !(Metric(kGenTokens) - gen_before >= 20)) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_GE(Metric(kGenTokens) - gen_before, 20);
  kill(pid, SIGINT);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  const std::string out = ReadFileOrDie(log_path);
  ASSERT_TRUE(WIFEXITED(st)) << out;
  EXPECT_EQ(WEXITSTATUS(st), 130) << out;
  nlohmann::json report = nlohmann::json::parse(ReadFileOrDie(json_path), nullptr, false);
  ASSERT_TRUE(report.is_object()) << out;
  const auto& s = report["summary"];
  EXPECT_TRUE(s["interrupted"].get<bool>());
  EXPECT_LT(s["completed"].get<int>() + s["failed"].get<int>(), 10000);
  EXPECT_GE(s["failed_by_code"].value("CANCELLED", 0), 1) << s.dump();  // the in-flight ones
  EXPECT_NE(out.find("Interrupted (SIGINT)"), std::string::npos) << out;
}

}  // namespace
}  // namespace tpserve::testing
