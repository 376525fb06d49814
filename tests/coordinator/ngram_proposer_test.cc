// Prompt-lookup proposals: the search order (longest n first, latest occurrence first), limits, and validation,
// against hand-worked token lists, for the index (TokenHistory) and for the plain scan the index is
// property-tested against (token_history_test.cc), so that reference is itself pinned by hand.
#include "coordinator/engine/ngram_proposer.h"

#include <vector>

#include "coordinator/engine/token_history.h"
#include "gtest/gtest.h"
#include "tests/coordinator/ngram_scan_reference.h"

namespace tpserve::coordinator {
namespace {

using V = std::vector<int32_t>;

// The index's proposal, after checking that the scan gives the same.
V Propose(int ngram_min, int ngram_max, const V& tokens, int k) {
  const NgramProposerOptions options{ngram_min, ngram_max};
  V indexed = TokenHistory(tokens, options).ProposeNgram(k);
  EXPECT_EQ(indexed, ngram_reference::ScanNgramProposal(options, tokens, k));
  return indexed;
}

TEST(NgramProposerTest, ProposesWhatFollowedTheLatestEarlierOccurrence) {
  // Suffix "1 2" occurs at 0 (followed by 3 4) and at 4 (followed by 9 9): the latest wins.
  EXPECT_EQ(Propose(1, 3, {1, 2, 3, 4, 1, 2, 9, 9, 1, 2}, 2), (V{9, 9}));
  // k caps the proposal; near the end the copy goes on from its own output (the loop continues).
  EXPECT_EQ(Propose(1, 3, {1, 2, 3, 4, 1, 2, 9, 9, 1, 2}, 1), (V{9}));
  EXPECT_EQ(Propose(1, 3, {1, 2, 3, 4, 1, 2, 9, 9, 1, 2}, 6), (V{9, 9, 1, 2, 9, 9}));
  EXPECT_EQ(Propose(1, 3, {7, 8, 7}, 5), (V{8, 7, 8, 7, 8}));
}

TEST(NgramProposerTest, LongerNgramsWinOverMoreRecentShorterOnes) {
  // n = 2 "5 6" matches at 0 (-> 7); n = 1 "6" would match later at 4 (-> 8). Longest n is tried first.
  EXPECT_EQ(Propose(1, 2, {5, 6, 7, 0, 6, 8, 5, 6}, 1), (V{7}));
  // With ngram_max = 1 only the single token counts: latest "6" is at 4.
  EXPECT_EQ(Propose(1, 1, {5, 6, 7, 0, 6, 8, 5, 6}, 1), (V{8}));
}

TEST(NgramProposerTest, NothingWhenNoNgramRecursOrNothingAsked) {
  EXPECT_TRUE(Propose(1, 3, {1, 2, 3, 4}, 4).empty());
  EXPECT_TRUE(Propose(2, 3, {1, 2, 3, 2}, 4).empty());  // "3 2" never occurred; n = 1 not allowed
  EXPECT_TRUE(Propose(1, 3, {1, 1}, 0).empty());
  EXPECT_TRUE(Propose(1, 3, {1}, 3).empty());
  EXPECT_TRUE(Propose(1, 3, {}, 3).empty());
}

TEST(NgramProposerTest, OverlappingOccurrencesOfARun) {
  // A run of one token: the suffix "4 4" last occurred one position earlier; the run goes on.
  EXPECT_EQ(Propose(1, 2, {4, 4, 4, 4}, 3), (V{4, 4, 4}));
  // A loop "1 2 3": proposes the continuation of the cycle.
  EXPECT_EQ(Propose(1, 4, {1, 2, 3, 1, 2, 3, 1}, 4), (V{2, 3, 1, 2}));
}

TEST(NgramProposerTest, OptionsAreValidated) {
  EXPECT_TRUE(ValidateNgramProposerOptions({1, 4}).ok());
  EXPECT_TRUE(ValidateNgramProposerOptions({3, 3}).ok());
  EXPECT_EQ(ValidateNgramProposerOptions({0, 4}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateNgramProposerOptions({3, 2}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tpserve::coordinator
