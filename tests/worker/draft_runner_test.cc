// DraftRunner (worker/draft_runner.h): with stories260K as the draft, its proposals are the greedy ids of
// ../shared/reference/stories260K.json (an independent llama2.c / NumPy forward) wherever a history is cut,
// across rollbacks of rejected proposals, a history replaced wholesale, a full KV pool and Forget().
#include "worker/draft_runner.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"

namespace tpserve::worker {
namespace {

using model::testing::BackendKind;
using model::testing::LoadRefCases;
using model::testing::MakeBackend;
using model::testing::RefCase;

std::vector<int32_t> Concat(const RefCase& c, int generated) {
  std::vector<int32_t> h = c.prompt;
  h.insert(h.end(), c.generated.begin(), c.generated.begin() + generated);
  return h;
}

std::vector<int32_t> Expected(const RefCase& c, int generated, int k) {
  const int end = std::min<int>(static_cast<int>(c.generated.size()), generated + k);
  return {c.generated.begin() + generated, c.generated.begin() + end};
}

class DraftRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = tpserve::testing::SharedPath("models/stories260K");
    const std::string ref = tpserve::testing::SharedPath("reference/stories260K.json");
    if (model_dir_.empty() || ref.empty()) GTEST_SKIP() << "../shared/models/stories260K or its reference absent";
    cases_ = LoadRefCases(ref);
    ASSERT_GE(cases_.size(), 2u);
    backend_ = MakeBackend(BackendKind::kCpu, 1);
    auto config = LoadModelConfig(model_dir_);
    ASSERT_TRUE(config.ok()) << config.status();
    auto runner = DraftRunner::Load(model_dir_, *config, backend_.get(), {});
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(*runner);
  }

  std::string model_dir_;
  std::vector<RefCase> cases_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<DraftRunner> runner_;
};

TEST_F(DraftRunnerTest, ProposalsAreTheGreedyContinuationAcrossRollbacks) {
  ASSERT_TRUE(runner_->AllocateKv(128, 4).ok());
  // Two sequences batched; after each proposal a verify "accepts" a varying prefix, so the draft's cache
  // must roll back its rejected proposals (a = 0 .. k) before running the accepted tokens.
  const int k = 6;
  int done[2] = {0, 0};
  int rounds = 0;
  while (done[0] + k < static_cast<int>(cases_[0].generated.size()) &&
         done[1] + k < static_cast<int>(cases_[1].generated.size())) {
    const std::vector<int32_t> h0 = Concat(cases_[0], done[0]);
    const std::vector<int32_t> h1 = Concat(cases_[1], done[1]);
    auto got = runner_->Propose({{10, h0, k}, {11, h1, k}});
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 2u);
    EXPECT_EQ((*got)[0], Expected(cases_[0], done[0], k)) << "round " << rounds;
    EXPECT_EQ((*got)[1], Expected(cases_[1], done[1], k)) << "round " << rounds;
    done[0] += 1 + rounds % (k + 1);        // accepted a = rounds % (k + 1), plus the target's token
    done[1] += 1 + (rounds * 3) % (k + 1);
    ++rounds;
  }
  EXPECT_GT(rounds, 10);
  EXPECT_EQ(runner_->num_sequences(), 2u);
  runner_->Forget(10);
  runner_->Forget(11);
  runner_->Forget(12);  // unknown: no-op
  EXPECT_EQ(runner_->num_sequences(), 0u);
  EXPECT_EQ(runner_->num_free_blocks(), 128);
}

TEST_F(DraftRunnerTest, AReplacedHistoryIsRebuiltFromItsTokens) {
  ASSERT_TRUE(runner_->AllocateKv(64, 4).ok());
  auto first = runner_->Propose({{7, Concat(cases_[0], 20), 4}});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)[0], Expected(cases_[0], 20, 4));
  // Same sequence id, another history (a replay after a restart may bring anything): only the shared
  // prefix of the cache may be kept (here the BOS token).
  auto second = runner_->Propose({{7, Concat(cases_[1], 30), 4}});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)[0], Expected(cases_[1], 30, 4));
}

TEST_F(DraftRunnerTest, AFullPoolGivesFewerProposalsAndNoneWhenNothingFits) {
  // 3 blocks of 4 positions: a history of n tokens leaves room for 12 - n + 1 proposals.
  ASSERT_TRUE(runner_->AllocateKv(3, 4).ok());
  const std::vector<int32_t> h = Concat(cases_[0], 10 - static_cast<int>(cases_[0].prompt.size()));
  ASSERT_EQ(h.size(), 10u);
  auto got = runner_->Propose({{1, h, 8}});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0], Expected(cases_[0], 10 - static_cast<int>(cases_[0].prompt.size()), 3));
  EXPECT_EQ(runner_->num_free_blocks(), 0);
  // A second sequence finds no block: no proposals, and the first keeps its cache.
  auto none = runner_->Propose({{2, Concat(cases_[1], 0), 2}});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE((*none)[0].empty());
  EXPECT_EQ(runner_->num_sequences(), 1u);
  runner_->Forget(1);
  EXPECT_EQ(runner_->num_free_blocks(), 3);
}

TEST(DraftMatchesTargetTest, RefusesAnotherTokenizerNamingTheField) {
  ModelConfig target;
  target.vocab_size = 32000;
  target.bos_token_id = 1;
  target.eos_token_id = 2;
  EXPECT_TRUE(CheckDraftMatchesTarget(target, target).ok());
  auto refused = [&](ModelConfig draft, const std::string& field) {
    absl::Status s = CheckDraftMatchesTarget(draft, target);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(s.message().find("--draft-model must share the target model's tokenizer, but its " + field),
              std::string::npos)
        << s;
  };
  ModelConfig d = target;
  d.vocab_size = 32001;
  refused(d, "vocab_size is 32001 where the target's is 32000");
  d = target;
  d.bos_token_id = 0;
  refused(d, "bos_token_id is 0");
  d = target;
  d.eos_token_id = 3;
  refused(d, "eos_token_id is 3");
}

}  // namespace
}  // namespace tpserve::worker
