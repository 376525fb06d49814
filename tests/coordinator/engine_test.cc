// Engine: the real engine loop (scheduler, request state, sinks) driven through a fake StepExecutor, with no
// process and no socket. The fake plays a greedy model whose next token is a hash of the sequence's whole
// history, so "fault-free greedy ids" have an independent reference (ReferenceIds) and a replay that resumed
// from a wrong history, or ran the wrong tokens at the wrong positions, gives different ids. The fake also
// checks what a worker relies on: every SeqStep continues the history its SequenceStart sent.
//
// docs/RELIABILITY.md rows covered here (the engine's part of each; the process-level tests stay where the
// table names them):
//   - worker SIGKILLed, launcher restarts it: ReplaysFromTokenHistoryAfterTheGroupIsLostMidStep
//   - worker SIGKILLed while the server is full: FullServerReplaysEveryRequestExactly
//   - worker lost and not restarted: WithoutRecoveryRequestsEndUnavailableNamingTheFlag
//   - client cancels / deadline / disconnect (all three reach the engine as Cancel(): api_service's OnCancel,
//     the HTTP disconnect watch): CancelEndsTheRequestAtTheNextStepAndFreesEveryBlock
//   - queue full: FullQueueAnswersResourceExhaustedAtOnceNamingTheLimit
//   - KV cache exhausted: KvExhaustionPreemptsByRecomputeAndLosesNothing
//   - SIGTERM (drain): DrainRejectsNewRequestsAndFinishesInFlightOnes, StopEndsWhatIsLeftUnavailable
//   - priority admission: HigherPriorityIsAdmittedFirst; a worker step error: StepErrorFailsTheStepsRequests
#include "coordinator/engine.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/metrics.h"
#include "coordinator/step_executor.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

namespace v1 = tpserve::v1;
namespace wv1 = tpserve::worker::v1;

constexpr absl::Duration kWait = absl::Seconds(20);  // bound on every wait; a healthy run takes milliseconds

// The fake model: next token from the whole history (FNV-1a), in [10, 210) so it is never BOS/EOS (1/2).
int32_t NextToken(const std::vector<int32_t>& history) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : history) {
    h ^= static_cast<uint32_t>(t);
    h *= 1099511628211ull;
  }
  return static_cast<int32_t>(10 + h % 200);
}

// A fake model whose output soon loops (the next token depends on the last one only, within a 23-token
// cycle space), so n-gram proposals get accepted: the speculation tests' model.
int32_t LoopingNextToken(const std::vector<int32_t>& history) {
  return static_cast<int32_t>(10 + (history.back() * 7 + 3) % 23);
}

using FakeModel = int32_t (*)(const std::vector<int32_t>&);

// What a fault-free greedy run generates: computed here, without the engine.
std::vector<int32_t> ReferenceIds(std::vector<int32_t> prompt, int n, FakeModel model = NextToken) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(model(prompt));
    prompt.push_back(out.back());
  }
  return out;
}

std::vector<int32_t> Prompt(int seed, int len) {
  std::vector<int32_t> p;
  for (int i = 0; i < len; ++i) p.push_back(20 + (seed * 37 + i * 11) % 300);
  return p;
}

// An in-memory worker group of one rank. Thread-safe; RunStep runs on the engine thread.
class FakeExecutor : public StepExecutor {
 public:
  absl::StatusOr<StepOutcome> RunStep(wv1::StepPlan plan, absl::Duration) override {
    absl::MutexLock lock(&mu_);
    const int step = ++steps_;
    if (pause_at_ == step) {
      paused_ = true;
      mu_.Await(absl::Condition(+[](FakeExecutor* f) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !f->paused_; }, this));
    }
    plans_.push_back(plan);
    if (!ready_) return absl::UnavailableError("fake group not ready");
    if (lose_at_ == step) {
      LoseLocked();
      return absl::UnavailableError("fake worker lost mid-step");
    }
    if (error_at_ == step) return absl::InternalError("fake worker step error");
    for (uint64_t id : plan.finished()) history_.erase(id);
    for (const auto& st : plan.starts()) {
      history_[st.seq_id()].assign(st.history().begin(), st.history().end());
      starts_[st.seq_id()].push_back(history_[st.seq_id()]);
    }
    StepOutcome out;
    out.result.set_step_id(plan.step_id());
    out.step_seconds = {0.001};
    out.allreduce_seconds = {0.0};
    for (const auto& s : plan.seqs()) {
      auto it = history_.find(s.seq_id());
      if (it == history_.end()) {
        errors_.push_back(absl::StrCat("step ", step, ": seq ", s.seq_id(), " has no SequenceStart"));
        continue;
      }
      std::vector<int32_t>& h = it->second;
      // The last num_draft_tokens are proposals: verified like worker_service does, one position at a time,
      // stopping after the first token that differs from the next proposal.
      const int d = s.num_draft_tokens();
      const int known = s.token_ids_size() - d;
      const size_t end = s.start_position() + known;
      bool consistent = end <= h.size() && d >= 0 && known > 0 && (d == 0 || s.sample());
      for (int i = 0; consistent && i < known; ++i) consistent = h[s.start_position() + i] == s.token_ids(i);
      if (!consistent) errors_.push_back(absl::StrCat("step ", step, ": seq ", s.seq_id(), " ran tokens off its history"));
      if (!s.sample()) continue;
      if (end != h.size()) errors_.push_back(absl::StrCat("step ", step, ": seq ", s.seq_id(), " sampled mid-history"));
      draft_tokens_ += d;
      for (int i = 0; i <= d; ++i) {
        const int32_t t = model_(h);
        h.push_back(t);
        auto* tok = out.result.add_tokens();
        tok->set_seq_id(s.seq_id());
        tok->set_token_id(t);
        if (i < d && t != s.token_ids(known + i)) break;
      }
      // Rank 0's draft model (worker/draft_runner.h): its greedy continuation of the new history.
      if (s.num_proposals() > 0 && draft_ != nullptr) {
        auto* p = out.result.add_proposals();
        p->set_seq_id(s.seq_id());
        p->set_num_tokens(static_cast<int>(h.size()));
        std::vector<int32_t> g = h;
        for (int i = 0; i < s.num_proposals(); ++i) {
          g.push_back(draft_(g));
          p->add_token_ids(g.back());
        }
      }
    }
    return out;
  }
  bool IsReady() const override {
    absl::MutexLock lock(&mu_);
    return ready_;
  }
  bool WaitReady(absl::Duration timeout) const override {
    absl::MutexLock lock(&mu_);
    ++ready_waits_;
    if (reform_after_waits_ > 0 && ready_waits_ >= reform_after_waits_) {
      reform_after_waits_ = 0;
      ready_ = true;
      ++generation_;
    }
    return mu_.AwaitWithTimeout(absl::Condition(&ready_), timeout);
  }
  int generation() const override {
    absl::MutexLock lock(&mu_);
    return generation_;
  }

  // Scripting, from the test thread.
  void SetReady(bool ready) {
    absl::MutexLock lock(&mu_);
    ready_ = ready;
  }
  // Step `step` (1-based) fails UNAVAILABLE and the group stays lost; it re-forms under a new generation at
  // the engine's `reform_after_waits`-th WaitReady, or never when 0.
  void LoseAtStep(int step, int reform_after_waits) {
    absl::MutexLock lock(&mu_);
    lose_at_ = step;
    pending_reform_ = reform_after_waits;
  }
  void ErrorAtStep(int step) {
    absl::MutexLock lock(&mu_);
    error_at_ = step;
  }
  // The engine blocks inside step `step` until Resume().
  void PauseAtStep(int step) {
    absl::MutexLock lock(&mu_);
    pause_at_ = step;
  }
  bool WaitPaused() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&paused_), kWait);
  }
  void Resume() {
    absl::MutexLock lock(&mu_);
    paused_ = false;
  }
  std::vector<std::vector<int32_t>> Starts(uint64_t seq) const {
    absl::MutexLock lock(&mu_);
    auto it = starts_.find(seq);
    return it == starts_.end() ? std::vector<std::vector<int32_t>>{} : it->second;
  }
  std::vector<wv1::StepPlan> Plans() const {
    absl::MutexLock lock(&mu_);
    return plans_;
  }
  std::vector<std::string> Errors() const {
    absl::MutexLock lock(&mu_);
    return errors_;
  }
  void SetModel(FakeModel model) {
    absl::MutexLock lock(&mu_);
    model_ = model;
  }
  // The draft model answering SeqStep.num_proposals (nullptr: none).
  void SetDraftModel(FakeModel model) {
    absl::MutexLock lock(&mu_);
    draft_ = model;
  }
  int64_t DraftTokens() const {
    absl::MutexLock lock(&mu_);
    return draft_tokens_;
  }

 private:
  void LoseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ready_ = false;
    history_.clear();  // the KV caches and sampler states die with the group
    ready_waits_ = 0;
    reform_after_waits_ = pending_reform_;
  }

  mutable absl::Mutex mu_;
  mutable bool ready_ ABSL_GUARDED_BY(mu_) = true;  // WaitReady re-forms the group when scripted to
  mutable int generation_ ABSL_GUARDED_BY(mu_) = 1;
  int steps_ ABSL_GUARDED_BY(mu_) = 0;
  int lose_at_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_reform_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int reform_after_waits_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int ready_waits_ ABSL_GUARDED_BY(mu_) = 0;
  int error_at_ ABSL_GUARDED_BY(mu_) = 0;
  int pause_at_ ABSL_GUARDED_BY(mu_) = 0;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> history_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::vector<std::vector<int32_t>>> starts_ ABSL_GUARDED_BY(mu_);
  std::vector<wv1::StepPlan> plans_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);
  FakeModel model_ ABSL_GUARDED_BY(mu_) = NextToken;
  FakeModel draft_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t draft_tokens_ ABSL_GUARDED_BY(mu_) = 0;  // proposals the plans carried
};

// Collects one request's output as a client would see it.
class RecordingSink : public RequestSink {
 public:
  void OnDelta(const v1::GenerateStreamResponse& delta) override {
    absl::MutexLock lock(&mu_);
    ids_.insert(ids_.end(), delta.token_ids().begin(), delta.token_ids().end());
    if (delta.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finish_ = delta.finish_reason();
      usage_ = delta.usage();
      done_ = true;
    }
  }
  // A client sees the final message (what was generated but not yet delivered, FINISH_REASON_ERROR), then
  // the status.
  void OnError(const absl::Status& status, const v1::GenerateStreamResponse* last) override {
    absl::MutexLock lock(&mu_);
    if (last != nullptr) {
      ids_.insert(ids_.end(), last->token_ids().begin(), last->token_ids().end());
      finish_ = last->finish_reason();
    }
    error_ = status;
    done_ = true;
  }
  bool WaitDone() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), kWait);
  }
  std::vector<int32_t> ids() {
    absl::MutexLock lock(&mu_);
    return ids_;
  }
  v1::FinishReason finish() {
    absl::MutexLock lock(&mu_);
    return finish_;
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }
  v1::Usage usage() {
    absl::MutexLock lock(&mu_);
    return usage_;
  }

 private:
  absl::Mutex mu_;
  std::vector<int32_t> ids_ ABSL_GUARDED_BY(mu_);
  v1::FinishReason finish_ ABSL_GUARDED_BY(mu_) = v1::FINISH_REASON_UNSPECIFIED;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  v1::Usage usage_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = ::tpserve::testing::SharedPath("models/stories260K");
    if (dir.empty()) GTEST_SKIP() << "../shared/models/stories260K (the detokenizer's vocabulary) is absent";
    auto tok = Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    options_.scheduler.num_blocks = 64;
    options_.scheduler.block_size = 4;
    options_.scheduler.max_num_seqs = 8;
    options_.scheduler.max_num_batched_tokens = 64;
    options_.scheduler.max_model_len = 128;
    options_.max_queued_requests = 16;
    options_.log_requests = false;
  }
  void TearDown() override {
    executor_.PauseAtStep(0);
    executor_.Resume();  // a test that failed while the engine was held in a step must not hang here
    if (engine_) engine_->Stop();
    EXPECT_TRUE(executor_.Errors().empty()) << executor_.Errors().front();
  }

  void StartEngine() {
    engine_ = std::make_unique<Engine>(options_, &executor_, tokenizer_.get(), &metrics_);
    engine_->Start();
  }
  static RequestSpec Spec(std::vector<int32_t> prompt, int max_new_tokens, int priority = 0) {
    RequestSpec spec;
    spec.prompt_ids = std::move(prompt);
    spec.max_new_tokens = max_new_tokens;
    spec.ignore_eos = true;
    spec.priority = priority;
    return spec;
  }
  uint64_t Submit(const RequestSpec& spec, const std::shared_ptr<RecordingSink>& sink) {
    auto handle = engine_->Submit(spec, sink);
    EXPECT_TRUE(handle.ok()) << handle.status();
    return handle.ok() ? *handle : 0;
  }
  // Every KV block back in the pool, bounded: the engine publishes the count between steps.
  bool WaitAllBlocksFree() {
    const absl::Time deadline = absl::Now() + kWait;
    while (engine_->num_free_blocks() != engine_->num_total_blocks() || engine_->num_in_flight() != 0) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  }

  EngineOptions options_;
  FakeExecutor executor_;
  Metrics metrics_{"fake", 1};
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, GeneratesTheGreedyIdsAndReturnsEveryBlock) {
  StartEngine();
  auto a = std::make_shared<RecordingSink>();
  auto b = std::make_shared<RecordingSink>();
  const uint64_t a_id = Submit(Spec(Prompt(1, 9), 10), a);
  const uint64_t b_id = Submit(Spec(Prompt(2, 5), 7), b);
  ASSERT_TRUE(a->WaitDone());
  ASSERT_TRUE(b->WaitDone());
  EXPECT_EQ(a->finish(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(a->ids(), ReferenceIds(Prompt(1, 9), 10));
  EXPECT_EQ(b->ids(), ReferenceIds(Prompt(2, 5), 7));
  EXPECT_TRUE(WaitAllBlocksFree());
  // The workers hear of every finished sequence, exactly once, with the next step (b finished while a still ran;
  // a finished when nothing else ran, so the next request's first step carries it).
  auto c = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(3, 4), 2), c);
  ASSERT_TRUE(c->WaitDone());
  int a_told = 0, b_told = 0;
  for (const auto& plan : executor_.Plans()) {
    for (uint64_t id : plan.finished()) {
      a_told += id == a_id;
      b_told += id == b_id;
    }
  }
  EXPECT_EQ(a_told, 1);
  EXPECT_EQ(b_told, 1);
}

TEST_F(EngineTest, CancelEndsTheRequestAtTheNextStepAndFreesEveryBlock) {
  executor_.PauseAtStep(3);
  StartEngine();
  auto cancelled = std::make_shared<RecordingSink>();
  auto other = std::make_shared<RecordingSink>();
  const uint64_t handle = Submit(Spec(Prompt(3, 6), 50), cancelled);
  Submit(Spec(Prompt(4, 6), 8), other);
  ASSERT_TRUE(executor_.WaitPaused()) << "the engine never reached step 3";
  engine_->Cancel(handle);  // arrives mid-step: takes effect at the step boundary
  executor_.Resume();
  ASSERT_TRUE(cancelled->WaitDone());
  EXPECT_EQ(cancelled->finish(), v1::FINISH_REASON_CANCELLED);
  EXPECT_TRUE(cancelled->error().ok());
  // Step 3 ran, so the client got exactly the three tokens the fault-free run begins with.
  EXPECT_EQ(cancelled->ids(), ReferenceIds(Prompt(3, 6), 3));
  ASSERT_TRUE(other->WaitDone());
  EXPECT_EQ(other->ids(), ReferenceIds(Prompt(4, 6), 8));
  // The workers were told to drop the cancelled sequence, and it never ran again.
  bool dropped = false, ran_after = false;
  for (const auto& plan : executor_.Plans()) {
    for (uint64_t id : plan.finished()) dropped |= id == handle;
    for (const auto& s : plan.seqs()) ran_after |= dropped && s.seq_id() == handle;
  }
  EXPECT_TRUE(dropped);
  EXPECT_FALSE(ran_after);
  EXPECT_TRUE(WaitAllBlocksFree());
}

TEST_F(EngineTest, CancelOfAFinishedOrUnknownHandleIsHarmless) {
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  const uint64_t handle = Submit(Spec(Prompt(5, 4), 3), sink);
  ASSERT_TRUE(sink->WaitDone());
  engine_->Cancel(handle);
  engine_->Cancel(987654);
  auto next = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(6, 4), 4), next);
  ASSERT_TRUE(next->WaitDone());
  EXPECT_EQ(next->ids(), ReferenceIds(Prompt(6, 4), 4));
  EXPECT_EQ(sink->finish(), v1::FINISH_REASON_LENGTH);
}

TEST_F(EngineTest, ReplaysFromTokenHistoryAfterTheGroupIsLostMidStep) {
  executor_.LoseAtStep(5, /*reform_after_waits=*/2);
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  const uint64_t handle = Submit(Spec(Prompt(7, 6), 12), sink);
  ASSERT_TRUE(sink->WaitDone());
  EXPECT_TRUE(sink->error().ok()) << sink->error();
  EXPECT_EQ(sink->finish(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(sink->ids(), ReferenceIds(Prompt(7, 6), 12));
  // Steps 1-4 sampled four tokens (the prefill and three decodes); step 5 was lost, so the replay's
  // SequenceStart carries the prompt and exactly those four tokens.
  const auto starts = executor_.Starts(handle);
  ASSERT_EQ(starts.size(), 2u);
  std::vector<int32_t> expected = Prompt(7, 6);
  for (int32_t t : ReferenceIds(Prompt(7, 6), 4)) expected.push_back(t);
  EXPECT_EQ(starts[1], expected);
  EXPECT_TRUE(WaitAllBlocksFree());
}

TEST_F(EngineTest, FullServerReplaysEveryRequestExactly) {
  // The reproduction: max_num_seqs running + max_queued_requests waiting, then the group is lost.
  // Replay re-queues all four past the queue limit (they were admitted once) and each completes exactly.
  options_.scheduler.max_num_seqs = 2;
  options_.max_queued_requests = 2;
  executor_.PauseAtStep(2);
  executor_.LoseAtStep(4, /*reform_after_waits=*/2);
  executor_.SetReady(false);  // the first two are admitted together by step 1, however the threads interleave
  StartEngine();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 4; ++i) sinks.push_back(std::make_shared<RecordingSink>());
  Submit(Spec(Prompt(10, 5), 9), sinks[0]);
  Submit(Spec(Prompt(11, 5), 9), sinks[1]);
  executor_.SetReady(true);
  ASSERT_TRUE(executor_.WaitPaused());  // both running: the next two wait in the queue
  Submit(Spec(Prompt(12, 5), 9), sinks[2]);
  Submit(Spec(Prompt(13, 5), 9), sinks[3]);
  auto refused = engine_->Submit(Spec(Prompt(14, 5), 9), std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);  // the server really is full
  executor_.Resume();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(sinks[i]->WaitDone()) << "request " << i;
    EXPECT_TRUE(sinks[i]->error().ok()) << "request " << i << ": " << sinks[i]->error();
    EXPECT_EQ(sinks[i]->ids(), ReferenceIds(Prompt(10 + i, 5), 9)) << "request " << i;
  }
  EXPECT_TRUE(WaitAllBlocksFree());
}

TEST_F(EngineTest, WithoutRecoveryRequestsEndUnavailableNamingTheFlag) {
  options_.recovery_timeout = absl::Milliseconds(200);
  executor_.LoseAtStep(2, /*reform_after_waits=*/0);  // never comes back
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(20, 5), 20), sink);
  ASSERT_TRUE(sink->WaitDone());
  EXPECT_EQ(sink->error().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(sink->error().message().find("--recovery-timeout"), std::string::npos) << sink->error();
  EXPECT_TRUE(WaitAllBlocksFree());
  EXPECT_EQ(metrics_.request_failure_total->Value(), 1);
}

TEST_F(EngineTest, FullQueueAnswersResourceExhaustedAtOnceNamingTheLimit) {
  options_.max_queued_requests = 3;
  executor_.SetReady(false);  // nothing runs: every submitted request stays queued
  StartEngine();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    Submit(Spec(Prompt(30 + i, 4), 3), sinks.back());
  }
  auto refused = engine_->Submit(Spec(Prompt(33, 4), 3), std::make_shared<RecordingSink>());
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--max-queued-requests"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("3"), std::string::npos) << refused.status();
  executor_.SetReady(true);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(sinks[i]->WaitDone());
    EXPECT_EQ(sinks[i]->ids(), ReferenceIds(Prompt(30 + i, 4), 3));
  }
  // Admission counts waiting requests only: once they ran, the queue takes new ones again.
  auto again = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(34, 4), 3), again);
  ASSERT_TRUE(again->WaitDone());
  EXPECT_EQ(again->ids(), ReferenceIds(Prompt(34, 4), 3));
}

TEST_F(EngineTest, KvExhaustionPreemptsByRecomputeAndLosesNothing) {
  // 8 blocks of 4 tokens; each request needs up to 5 blocks (6 prompt + 14 new tokens): both cannot hold
  // their whole context at once, so the junior one is preempted and later recomputed from its history.
  options_.scheduler.num_blocks = 8;
  options_.scheduler.enable_prefix_caching = false;
  executor_.SetReady(false);  // both are queued before the first step, however the threads interleave
  StartEngine();
  auto a = std::make_shared<RecordingSink>();
  auto b = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(40, 6), 14), a);
  const uint64_t junior = Submit(Spec(Prompt(41, 6), 14), b);
  executor_.SetReady(true);
  ASSERT_TRUE(a->WaitDone());
  ASSERT_TRUE(b->WaitDone());
  EXPECT_EQ(a->ids(), ReferenceIds(Prompt(40, 6), 14));
  EXPECT_EQ(b->ids(), ReferenceIds(Prompt(41, 6), 14));
  EXPECT_GE(metrics_.num_preemptions_total->Value(), 1);
  EXPECT_GE(executor_.Starts(junior).size(), 2u) << "the junior request was never preempted";
  EXPECT_TRUE(WaitAllBlocksFree());
}

TEST_F(EngineTest, HigherPriorityIsAdmittedFirst) {
  options_.scheduler.max_num_seqs = 1;
  executor_.SetReady(false);
  StartEngine();
  auto low = std::make_shared<RecordingSink>();
  auto high = std::make_shared<RecordingSink>();
  const uint64_t low_id = Submit(Spec(Prompt(50, 4), 3, /*priority=*/5), low);
  const uint64_t high_id = Submit(Spec(Prompt(51, 4), 3, /*priority=*/0), high);
  // Both must be inside the scheduler before it runs: wait until the engine has taken them off the inbox.
  const absl::Time deadline = absl::Now() + kWait;
  while (metrics_.num_requests_waiting->Value() < 2) {
    ASSERT_LT(absl::Now(), deadline) << "the engine never queued both requests";
    absl::SleepFor(absl::Milliseconds(1));
  }
  executor_.SetReady(true);
  ASSERT_TRUE(low->WaitDone());
  ASSERT_TRUE(high->WaitDone());
  const auto plans = executor_.Plans();
  ASSERT_FALSE(plans.empty());
  ASSERT_GT(plans[0].starts_size(), 0);
  EXPECT_EQ(plans[0].starts(0).seq_id(), high_id);
  // With one running slot, the low-priority request starts only after the high one finished.
  for (const auto& plan : plans) {
    bool has_high = false, has_low = false;
    for (const auto& s : plan.seqs()) {
      has_high |= s.seq_id() == high_id;
      has_low |= s.seq_id() == low_id;
    }
    EXPECT_FALSE(has_high && has_low);
  }
  EXPECT_EQ(low->ids(), ReferenceIds(Prompt(50, 4), 3));
}

TEST_F(EngineTest, DrainRejectsNewRequestsAndFinishesInFlightOnes) {
  executor_.PauseAtStep(2);
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(60, 5), 10), sink);
  ASSERT_TRUE(executor_.WaitPaused());
  engine_->StopAccepting();
  auto refused = engine_->Submit(Spec(Prompt(61, 5), 10), std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("draining"), std::string::npos) << refused.status();
  executor_.Resume();
  ASSERT_TRUE(sink->WaitDone());
  EXPECT_EQ(sink->finish(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(sink->ids(), ReferenceIds(Prompt(60, 5), 10));
  EXPECT_TRUE(WaitAllBlocksFree());
}

// A server-side end is UNAVAILABLE (so retry policies move the request to another replica), after a last
// message with FINISH_REASON_ERROR.
TEST_F(EngineTest, StopEndsWhatIsLeftUnavailable) {
  executor_.SetReady(false);
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(70, 5), 10), sink);
  engine_->Stop();
  ASSERT_TRUE(sink->WaitDone());
  EXPECT_EQ(sink->error().code(), absl::StatusCode::kUnavailable) << sink->error();
  EXPECT_EQ(sink->finish(), v1::FINISH_REASON_ERROR);
  EXPECT_EQ(engine_->num_in_flight(), 0);
}

TEST_F(EngineTest, StepErrorFailsTheStepsRequests) {
  executor_.ErrorAtStep(3);
  StartEngine();
  auto sink = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(80, 5), 10), sink);
  ASSERT_TRUE(sink->WaitDone());
  EXPECT_EQ(sink->error().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(sink->ids(), ReferenceIds(Prompt(80, 5), 2));  // what steps 1 and 2 produced was streamed
  EXPECT_TRUE(WaitAllBlocksFree());
  // The engine keeps serving.
  auto next = std::make_shared<RecordingSink>();
  Submit(Spec(Prompt(81, 5), 4), next);
  ASSERT_TRUE(next->WaitDone());
  EXPECT_EQ(next->ids(), ReferenceIds(Prompt(81, 5), 4));
}

// Speculative decoding (issue 17): with n-gram proposals at k = 1, 4, 8 every request gets exactly the ids of a
// run without speculation, on a model whose output loops (proposals accepted) and on one that never repeats
// (proposals, when any, rejected), mixed in one batch; a stop token inside an accepted run ends the request
// there; usage.speculative counts what was proposed and accepted.
TEST_F(EngineTest, SpeculationNeverChangesTheIds) {
  for (FakeModel model : {LoopingNextToken, NextToken}) {
    executor_.SetModel(model);
    for (int k : {0, 1, 4, 8}) {
      SCOPED_TRACE(absl::StrCat("k = ", k, model == NextToken ? " (hash model)" : " (looping model)"));
      options_.scheduler.speculative.num_speculative_tokens = k;
      options_.scheduler.speculative.ngram = {1, 3};
      StartEngine();
      const int64_t drafts_before = executor_.DraftTokens();
      std::vector<std::shared_ptr<RecordingSink>> sinks;
      std::vector<std::vector<int32_t>> want;
      for (int i = 0; i < 6; ++i) {
        sinks.push_back(std::make_shared<RecordingSink>());
        const int n = 9 + 5 * i;
        Submit(Spec(Prompt(i, 3 + 2 * i), n), sinks.back());
        want.push_back(ReferenceIds(Prompt(i, 3 + 2 * i), n, model));
      }
      // A stop token that recurs in the loop: the request ends at its first occurrence, whatever was accepted
      // after it in the same step.
      auto stopped = std::make_shared<RecordingSink>();
      const std::vector<int32_t> long_ref = ReferenceIds(Prompt(9, 4), 40, model);
      RequestSpec stop_spec = Spec(Prompt(9, 4), 40);
      stop_spec.stop_token_ids = {long_ref[12]};
      Submit(stop_spec, stopped);
      const auto stop_at = std::find(long_ref.begin(), long_ref.end(), long_ref[12]);
      const std::vector<int32_t> stop_want(long_ref.begin(), stop_at + 1);

      int accepted = 0;
      for (size_t i = 0; i < sinks.size(); ++i) {
        ASSERT_TRUE(sinks[i]->WaitDone());
        EXPECT_EQ(sinks[i]->ids(), want[i]) << "request " << i;
        EXPECT_EQ(sinks[i]->finish(), v1::FINISH_REASON_LENGTH);
        const v1::Usage usage = sinks[i]->usage();  // a copy: the sink returns its usage by value
        const v1::SpeculativeUsage& u = usage.speculative();
        EXPECT_LE(u.num_accepted_tokens(), u.num_draft_tokens());
        EXPECT_EQ(usage.completion_tokens(), static_cast<int>(want[i].size()));
        accepted += u.num_accepted_tokens();
      }
      ASSERT_TRUE(stopped->WaitDone());
      EXPECT_EQ(stopped->ids(), stop_want);
      EXPECT_EQ(stopped->finish(), v1::FINISH_REASON_STOP_TOKEN);
      EXPECT_TRUE(WaitAllBlocksFree());
      if (k == 0) {
        EXPECT_EQ(executor_.DraftTokens(), drafts_before);
      } else if (model == LoopingNextToken) {
        EXPECT_GT(accepted, 0) << "the looping model's output should be proposed and accepted";
      }
      engine_->Stop();
      engine_.reset();
    }
  }
  EXPECT_GT(executor_.DraftTokens(), 0);
}

// Draft-model speculation through the engine: proposals come back with each step and are verified in the
// next; a draft equal to the model is (nearly) always right, a different one nearly always wrong, and the ids
// are those of a run without speculation either way, across a worker loss and replay too.
TEST_F(EngineTest, DraftSpeculationNeverChangesTheIdsAcrossAReplay) {
  for (FakeModel draft : {LoopingNextToken, NextToken}) {
    SCOPED_TRACE(draft == NextToken ? "hash draft (disagrees)" : "looping draft (agrees)");
    executor_.SetModel(LoopingNextToken);
    executor_.SetDraftModel(draft);
    options_.scheduler.speculative.num_speculative_tokens = 4;
    options_.scheduler.speculative.method = SpeculativeMethod::kDraft;
    // Lost mid-speculation: the 7th step from here, after proposals have been verified.
    executor_.LoseAtStep(static_cast<int>(executor_.Plans().size()) + 7, /*reform_after_waits=*/2);
    const int64_t drafts_before = executor_.DraftTokens();
    const int generation_before = executor_.generation();
    StartEngine();
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (int i = 0; i < 4; ++i) {
      sinks.push_back(std::make_shared<RecordingSink>());
      Submit(Spec(Prompt(i, 5 + i), 30), sinks.back());
    }
    int accepted = 0, proposed = 0;
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(sinks[i]->WaitDone());
      EXPECT_EQ(sinks[i]->ids(), ReferenceIds(Prompt(i, 5 + i), 30, LoopingNextToken)) << "request " << i;
      const v1::Usage usage = sinks[i]->usage();
      accepted += usage.speculative().num_accepted_tokens();
      proposed += usage.speculative().num_draft_tokens();
    }
    EXPECT_TRUE(WaitAllBlocksFree());
    EXPECT_GT(executor_.DraftTokens(), drafts_before);
    EXPECT_GT(executor_.generation(), generation_before) << "the group was never lost: no replay tested";
    if (draft == LoopingNextToken) {
      EXPECT_EQ(accepted, proposed) << "the model as its own draft is always right";
    } else {
      EXPECT_LT(accepted, proposed);
    }
    engine_->Stop();
    engine_.reset();
  }
}

// Replay after a worker loss restarts speculation from the Sequence's token history: still the same ids.
TEST_F(EngineTest, SpeculationReplaysExactlyAfterTheGroupIsLost) {
  executor_.SetModel(LoopingNextToken);
  options_.scheduler.speculative.num_speculative_tokens = 4;
  executor_.LoseAtStep(6, /*reform_after_waits=*/2);
  StartEngine();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 4; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    Submit(Spec(Prompt(i, 5 + i), 30), sinks.back());
  }
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(sinks[i]->WaitDone());
    EXPECT_EQ(sinks[i]->ids(), ReferenceIds(Prompt(i, 5 + i), 30, LoopingNextToken)) << "request " << i;
  }
  EXPECT_TRUE(WaitAllBlocksFree());
  EXPECT_GT(executor_.DraftTokens(), 0);
}

}  // namespace
}  // namespace tpserve::coordinator
