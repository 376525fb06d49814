// The serving core through real processes: continuous batching keeps greedy output batch-invariant under
// concurrency, cancellation returns KV blocks, the queue bound answers RESOURCE_EXHAUSTED, and every
// validation error is INVALID_ARGUMENT naming its field.
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

const char* kPrompts[] = {"Once upon a time", "Lily and Tom", "The big dog", "One day, a little bird",
                          "Tim had a red ball", "The sun was hot", "Sue liked to sing", "A cat sat"};

v1::GenerateRequest Greedy(const std::string& prompt, int max_new_tokens) {
  return GreedyRequest(prompt, max_new_tokens);
}

std::vector<int32_t> RunUnary(v1::Generation::Stub& stub, const v1::GenerateRequest& req, grpc::Status* status = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  v1::GenerateResponse resp;
  grpc::Status s = stub.Generate(&ctx, req, &resp);
  if (status) *status = s;
  return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
}

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int messages = 0;
};

StreamResult RunStream(v1::Generation::Stub& stub, const v1::GenerateRequest& req) {
  StreamResult r;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub.GenerateStream(&ctx, req);
  v1::GenerateStreamResponse msg;
  while (reader->Read(&msg)) {
    ++r.messages;
    r.ids.insert(r.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    r.text += msg.text_delta();
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) r.finish = msg.finish_reason();
  }
  r.status = reader->Finish();
  return r;
}

class ConcurrencyTest : public ::testing::TestWithParam<int> {};

// 16 concurrent streaming greedy requests with mixed lengths each equal their solo output.
TEST_P(ConcurrencyTest, SixteenConcurrentStreamsEqualSoloOutput) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, GetParam(), {"--max_num_seqs=16", "--max_num_batched_tokens=64"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  const int n = 16;
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < n; ++i) reqs.push_back(Greedy(kPrompts[i % 8], 8 + 9 * i));
  std::vector<std::vector<int32_t>> solo(n);
  for (int i = 0; i < n; ++i) {
    grpc::Status s;
    solo[i] = RunUnary(*stub, reqs[i], &s);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(solo[i].size(), static_cast<size_t>(reqs[i].stopping().max_new_tokens()));
  }
  std::vector<StreamResult> results(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back([&, i] { results[i] = RunStream(*stub, reqs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].ids, solo[i]) << "request " << i;
    EXPECT_EQ(results[i].finish, v1::FINISH_REASON_LENGTH);
    EXPECT_GT(results[i].messages, 1) << "streaming sends one message per step";
  }
  EXPECT_EQ(server.Stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Tp, ConcurrencyTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });

double Metric(const ServerProcess& server, const std::string& name) {
  return MetricValue(server.HttpGet("/metrics"), name + "{model_name=\"stories260K\"}");
}

// Waits until the metric reaches `want` (the engine updates gauges between steps).
bool WaitForMetric(const ServerProcess& server, const std::string& name, double want, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Metric(server, name) == want) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

TEST(CancellationTest, ClientCancelFreesEveryBlock) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  // No prefix caching: every block a request held must come back as plainly free.
  ServerProcess server({model_dir, 1, {"--enable_prefix_caching=false"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  ASSERT_TRUE(WaitForMetric(server, "tpserve:kv_cache_usage_perc", 0, absl::Seconds(10)));
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext ctx;
    auto reader = stub->GenerateStream(&ctx, Greedy("Once upon a time", 400));
    v1::GenerateStreamResponse msg;
    int got = 0;
    while (got < 5 && reader->Read(&msg)) got += msg.token_ids_size();
    ASSERT_GE(got, 5);
    EXPECT_GT(Metric(server, "tpserve:kv_cache_usage_perc"), 0.0);
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
    EXPECT_TRUE(WaitForMetric(server, "tpserve:kv_cache_usage_perc", 0, absl::Seconds(10)))
        << "blocks not returned to the pool";
    EXPECT_TRUE(WaitForMetric(server, "tpserve:num_requests_running", 0, absl::Seconds(10)));
  }
  // A deadline cancels too.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(20));
    auto reader = stub->GenerateStream(&ctx, Greedy("Once upon a time", 500));
    v1::GenerateStreamResponse msg;
    while (reader->Read(&msg)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_TRUE(WaitForMetric(server, "tpserve:kv_cache_usage_perc", 0, absl::Seconds(10)));
  }
  EXPECT_NE(server.ReadLog().find("finish_reason=abort"), std::string::npos);
  EXPECT_EQ(server.Stop(), 0);
}

TEST(BackpressureTest, FullQueueAnswersResourceExhaustedAtOnce) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {"--max_num_seqs=1", "--max_queued_requests=2"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  // One long request runs; two wait; everything after that is refused.
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>>> readers;
  for (int i = 0; i < 3; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->GenerateStream(ctxs.back().get(), Greedy("Once upon a time", 450)));
    if (i == 0) {
      v1::GenerateStreamResponse msg;
      ASSERT_TRUE(readers[0]->Read(&msg));  // running now
    }
  }
  ASSERT_TRUE(WaitForMetric(server, "tpserve:num_requests_waiting", 2, absl::Seconds(10)));
  grpc::Status s;
  RunUnary(*stub, Greedy("Lily and Tom", 4), &s);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("queue is full"), std::string::npos) << s.error_message();
  // "At once" is a property of admission, not a time: Engine::Submit refuses from the queue count without
  // waiting for a slot. EngineTest.FullQueueAnswersResourceExhaustedAtOnceNamingTheLimit proves it where nothing
  // can run at all, so a refusal that waited would never come.
  for (auto& c : ctxs) c->TryCancel();
  for (auto& r : readers) {
    v1::GenerateStreamResponse msg;
    while (r->Read(&msg)) {
    }
    r->Finish();
  }
  EXPECT_EQ(server.Stop(), 0);
}

struct BadRequest {
  const char* name;
  v1::GenerateRequest req;
  const char* field;
};

TEST(ValidationTest, EachBadFieldIsInvalidArgumentNamingIt) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  std::vector<BadRequest> cases;
  auto ok = [] { return Greedy("Once upon a time", 4); };
  {
    v1::GenerateRequest r = ok();
    r.clear_input();
    cases.push_back({"no input", r, "input"});
  }
  {
    v1::GenerateRequest r = ok();
    r.set_prompt("");
    cases.push_back({"empty prompt", r, "prompt"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_chat();
    cases.push_back({"empty chat", r, "chat.messages"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_stopping()->set_max_new_tokens(0);
    cases.push_back({"max_new_tokens 0", r, "max_new_tokens"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_stopping()->set_max_new_tokens(100000);
    cases.push_back({"max_new_tokens beyond context", r, "max_new_tokens"});
  }
  {
    std::string long_prompt;
    for (int i = 0; i < 400; ++i) long_prompt += "Once upon a time ";
    v1::GenerateRequest r = ok();
    r.set_prompt(long_prompt);
    cases.push_back({"prompt longer than context", r, "prompt"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_sampling()->set_temperature(-0.5f);
    cases.push_back({"negative temperature", r, "temperature"});
  }
  for (float p : {0.0f, 1.5f}) {
    v1::GenerateRequest r = ok();
    r.mutable_sampling()->set_top_p(p);
    cases.push_back({"top_p out of range", r, "top_p"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_sampling()->set_top_k(-1);
    cases.push_back({"negative top_k", r, "top_k"});
  }
  {
    v1::GenerateRequest r = ok();
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("wizard");
    m->set_content("hi");
    cases.push_back({"unknown role", r, "role"});
  }
  {
    v1::GenerateRequest r = ok();
    r.set_prompt(std::string("bad \xc3\x28 utf8"));
    cases.push_back({"invalid UTF-8 prompt", r, "prompt"});
  }
  {
    v1::GenerateRequest r = ok();
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(std::string("\xff\xfe"));
    cases.push_back({"invalid UTF-8 chat content", r, "content"});
  }
  {
    v1::GenerateRequest r = ok();
    r.mutable_token_ids()->add_ids(100000);
    cases.push_back({"token id outside vocab", r, "token_ids"});
  }
  for (const auto& c : cases) {
    grpc::Status s;
    RunUnary(*stub, c.req, &s);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.field), std::string::npos) << c.name << ": " << s.error_message();
    StreamResult sr = RunStream(*stub, c.req);
    EXPECT_EQ(sr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
  }
  // The server is still healthy and serving.
  grpc::Status s;
  EXPECT_EQ(RunUnary(*stub, ok(), &s).size(), 4u);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(server.Stop(), 0);
}

TEST(StoppingTest, StopStringsAcrossTokensAreNotEmitted) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  // Learn the greedy continuation, then stop on a string that spans token boundaries inside it.
  v1::GenerateRequest base = Greedy("Once upon a time", 30);
  grpc::ClientContext ctx;
  v1::GenerateResponse full;
  ASSERT_TRUE(stub->Generate(&ctx, base, &full).ok());
  const std::string text = full.text();  // ", there was a little girl named Lily. ..."
  size_t pos = text.find("little girl");
  ASSERT_NE(pos, std::string::npos) << text;
  v1::GenerateRequest req = base;
  req.mutable_stopping()->add_stop("tle gi");
  StreamResult r = RunStream(*stub, req);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.finish, v1::FINISH_REASON_STOP_SEQUENCE);
  EXPECT_EQ(r.text, text.substr(0, pos + 3)) << "stop text must not be emitted";
  // max_new_tokens and stop_token_ids.
  v1::GenerateRequest req2 = base;
  req2.mutable_stopping()->add_stop_token_ids(full.token_ids(3));
  StreamResult r2 = RunStream(*stub, req2);
  EXPECT_EQ(r2.finish, v1::FINISH_REASON_STOP_TOKEN);
  EXPECT_EQ(r2.ids.size(), 4u);
  EXPECT_EQ(server.Stop(), 0);
}

}  // namespace
}  // namespace tpserve::testing
