// Operations through real processes: Prometheus metrics equal what was served, health tells the truth when a
// worker is SIGKILLed and when it comes back, and SIGTERM drains in-flight streams while refusing new work.
#include <signal.h>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

v1::GenerateRequest Greedy(const std::string& prompt, int max_new_tokens) {
  return GreedyRequest(prompt, max_new_tokens);
}

const std::string kLabels = "{model_name=\"stories260K\"}";

// The drain tests' --drain_timeout: long enough for their streams to finish on a server slowed by a sanitizer or a
// busy machine (it bounds the drain; what the tests assert is that the streams complete).
std::string DrainTimeoutFlag() {
  return absl::StrCat("--drain_timeout=", absl::ToInt64Seconds(ScaledTimeout(absl::Seconds(60))));
}

double Get(const std::string& metrics, const std::string& name, const std::string& labels = kLabels) {
  return MetricValue(metrics, name + labels);
}

TEST(MetricsTest, CountersAndHistogramsEqualWhatWasServed) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 2, {"--max_num_seqs=4"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  const std::vector<std::pair<std::string, int>> work = {{"Once upon a time", 7}, {"Lily and Tom", 13},
                                                         {"The big dog", 21},     {"A cat sat", 3},
                                                         {"Tim had a red ball", 11}, {"Sue liked to sing", 17}};
  int want_prompt = 0, want_completion = 0;
  std::vector<std::thread> threads;
  std::vector<v1::GenerateResponse> resps(work.size());
  std::vector<grpc::Status> statuses(work.size());
  for (size_t i = 0; i < work.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      statuses[i] = stub->Generate(&ctx, Greedy(work[i].first, work[i].second), &resps[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < work.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    want_prompt += resps[i].usage().prompt_tokens();
    want_completion += resps[i].usage().completion_tokens();
    EXPECT_EQ(resps[i].usage().completion_tokens(), work[i].second);
  }
  // Gauges settle between engine steps.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::string m;
  while (absl::Now() < deadline) {
    m = server.HttpGet("/metrics");
    if (Get(m, "tpserve:kv_cache_usage_perc") == 0 && Get(m, "tpserve:num_requests_running") == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  const double n = static_cast<double>(work.size());
  EXPECT_EQ(Get(m, "tpserve:prompt_tokens_total"), want_prompt);
  EXPECT_EQ(Get(m, "tpserve:generation_tokens_total"), want_completion);
  EXPECT_EQ(Get(m, "tpserve:time_to_first_token_seconds_count"), n);
  EXPECT_EQ(Get(m, "tpserve:e2e_request_latency_seconds_count"), n);
  EXPECT_EQ(Get(m, "tpserve:request_queue_time_seconds_count"), n);
  EXPECT_EQ(Get(m, "tpserve:request_generation_tokens_sum"), want_completion);
  EXPECT_EQ(Get(m, "tpserve:request_prompt_tokens_sum"), want_prompt);
  // One inter-token gap per token after the first.
  EXPECT_EQ(Get(m, "tpserve:inter_token_latency_seconds_count"), want_completion - n);
  EXPECT_EQ(Get(m, "tpserve:request_success_total", "{finished_reason=\"length\",model_name=\"stories260K\"}"), n);
  EXPECT_EQ(Get(m, "tpserve:kv_cache_usage_perc"), 0);
  EXPECT_EQ(Get(m, "tpserve:num_requests_running"), 0);
  EXPECT_EQ(Get(m, "tpserve:num_requests_waiting"), 0);
  EXPECT_EQ(Get(m, "tpserve:prefix_cache_queries_total"), want_prompt);
  EXPECT_EQ(Get(m, "tpserve:worker_up", "{model_name=\"stories260K\",rank=\"0\"}"), 1);
  EXPECT_EQ(Get(m, "tpserve:worker_up", "{model_name=\"stories260K\",rank=\"1\"}"), 1);
  EXPECT_NE(m.find("tpserve:cache_config_info{block_size=\"16\""), std::string::npos);
  EXPECT_NE(m.find("tpserve:worker_step_time_seconds_count{model_name=\"stories260K\",rank=\"1\"}"), std::string::npos);
  EXPECT_EQ(server.Stop(), 0);
}

TEST(HealthTest, SigkillOfAWorkerTurnsNotServingAndRestartTurnsServing) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 2, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  int code = 0;
  server.HttpGet("/ready", &code);
  EXPECT_EQ(code, 200);
  std::vector<pid_t> workers = server.ChildPids();
  ASSERT_EQ(workers.size(), 2u);
  kill(workers[1], SIGKILL);
  // The documented 5 s (heartbeat timeout 3 s) is the wait's bound; how fast it turns is for bench/, not a test.
  ASSERT_TRUE(server.WaitForHealth("NOT_SERVING", absl::Seconds(5))) << server.ReadLog();
  server.HttpGet("/ready", &code);
  EXPECT_EQ(code, 503);
  server.HttpGet("/health", &code);
  EXPECT_EQ(code, 200) << "liveness stays up: the coordinator itself is fine";
  // The launcher restarts the worker and the group re-forms.
  ASSERT_TRUE(server.WaitForHealth("SERVING", absl::Seconds(60))) << server.ReadLog();
  server.HttpGet("/ready", &code);
  EXPECT_EQ(code, 200);
  auto stub = server.NewStub();
  grpc::ClientContext ctx;
  v1::GenerateResponse resp;
  ASSERT_TRUE(stub->Generate(&ctx, Greedy("Once upon a time", 5), &resp).ok());
  const std::vector<int32_t> want = ReferenceGreedyIds("stories260K.json", "Once upon a time", 5);
  ASSERT_EQ(want.size(), 5u) << "../shared/reference/stories260K.json has no 'Once upon a time' case";
  EXPECT_EQ(std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end()), want);
  EXPECT_EQ(server.Stop(), 0);
}

TEST(DrainTest, SigtermFinishesInFlightStreamsAndRejectsNewRequests) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  // One sequence at a time makes the in-flight work long enough to observe the drain.
  ServerProcess server({model_dir, 1, {"--max_num_seqs=1", DrainTimeoutFlag()}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  const int n = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>>> readers;
  for (int i = 0; i < n; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->GenerateStream(ctxs.back().get(), Greedy("Once upon a time", 400)));
  }
  v1::GenerateStreamResponse first;
  ASSERT_TRUE(readers[0]->Read(&first));
  server.Signal(SIGTERM);
  ASSERT_TRUE(server.WaitForHealth("NOT_SERVING", absl::Seconds(5)));
  grpc::ClientContext ctx;
  v1::GenerateResponse resp;
  grpc::Status refused = stub->Generate(&ctx, Greedy("Lily and Tom", 4), &resp);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  for (int i = 0; i < n; ++i) {
    v1::GenerateStreamResponse msg;
    int tokens = i == 0 ? first.token_ids_size() : 0;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    while (readers[i]->Read(&msg)) {
      tokens += msg.token_ids_size();
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = msg.finish_reason();
    }
    grpc::Status s = readers[i]->Finish();
    EXPECT_TRUE(s.ok()) << "stream " << i << ": " << s.error_message();
    EXPECT_EQ(tokens, 400) << "stream " << i;
    EXPECT_EQ(finish, v1::FINISH_REASON_LENGTH);
  }
  absl::Time deadline = absl::Now() + ScaledTimeout(absl::Seconds(30));
  while (server.PollExit() < 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(server.PollExit(), 0) << server.ReadLog();
}

}  // namespace
}  // namespace tpserve::testing

namespace tpserve::testing {
namespace {

// Ctrl-C in a terminal signals the whole foreground process group. The workers are in their own group, so
// only the launcher sees it: it drains (the in-flight stream finishes on the workers), shuts the workers
// down and exits, without restarting a worker on the way out.
TEST(DrainTest, SigintToTheWholeProcessGroupDrainsAndExits) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerOptions options{model_dir, 2, {"--max_num_seqs=1", DrainTimeoutFlag()}};
  options.own_process_group = true;
  ServerProcess server(options);
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  grpc::ClientContext ctx;
  auto reader = stub->GenerateStream(&ctx, GreedyRequest("Once upon a time", 400));
  v1::GenerateStreamResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  int tokens = msg.token_ids_size();
  server.SignalGroup(SIGINT);
  while (reader->Read(&msg)) tokens += msg.token_ids_size();
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message() << "\n" << server.ReadLog();
  EXPECT_EQ(tokens, 400);
  absl::Time deadline = absl::Now() + ScaledTimeout(absl::Seconds(30));
  while (server.PollExit() < 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(server.PollExit(), 0) << server.ReadLog();
  EXPECT_EQ(server.ReadLog().find("restarting it"), std::string::npos) << server.ReadLog();
}

}  // namespace
}  // namespace tpserve::testing
