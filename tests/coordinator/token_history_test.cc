// TokenHistory's n-gram index against the plain scan that defines prompt-lookup proposals
// (ngram_scan_reference.h): random and repetitive histories grown token by token and in accepted runs, cut back
// (rollback), rebuilt from their tokens (replay / preemption recompute) and copied, for several n ranges. After
// every change the index must give exactly the scan's proposals for k = 1..8, and the early-probe question
// (do the last ngram_max tokens recur?) the scan's answer.
#include "coordinator/engine/token_history.h"

#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/coordinator/ngram_scan_reference.h"

namespace tpserve::coordinator {
namespace {

using V = std::vector<int32_t>;
using ngram_reference::ScanNgramProposal;

void ExpectSameAsScan(const TokenHistory& h, const NgramProposerOptions& o) {
  const V& tokens = h.tokens();
  for (int k : {0, 1, 2, 3, 4, 8}) {
    ASSERT_EQ(h.ProposeNgram(k), ScanNgramProposal(o, tokens, k)) << "k " << k << ", " << tokens.size() << " tokens";
  }
  const bool recurs = !ScanNgramProposal({o.ngram_max, o.ngram_max}, tokens, 1).empty();
  ASSERT_EQ(h.LongestNgramRecurs(), recurs) << tokens.size() << " tokens";
}

// Tokens that repeat the way model output does: a loop of some period with now and then a changed token or a
// restart, over a small vocabulary; or plain random ids over a wide one (recurrences are then rare).
class HistorySource {
 public:
  explicit HistorySource(uint32_t seed) : rng_(seed) {
    repetitive_ = Uniform(0, 2) > 0;
    vocab_ = repetitive_ ? Uniform(2, 12) : Uniform(20, 32000);
    Restart();
  }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  int32_t Next() {
    if (!repetitive_) return Uniform(0, vocab_ - 1);
    if (Uniform(0, 60) == 0) Restart();
    int32_t t = loop_[pos_++ % loop_.size()];
    if (Uniform(0, 12) == 0) t = Uniform(0, vocab_ - 1);
    return t;
  }

 private:
  void Restart() {
    loop_.assign(Uniform(1, 9), 0);
    for (int32_t& t : loop_) t = Uniform(0, vocab_ - 1);
    pos_ = 0;
  }
  std::mt19937 rng_;
  bool repetitive_ = false;
  int vocab_ = 2;
  V loop_;
  size_t pos_ = 0;
};

TEST(TokenHistoryTest, NgramIndexProposesExactlyWhatTheScanFinds) {
  const std::vector<NgramProposerOptions> ranges = {{1, 1}, {1, 3}, {1, 4}, {2, 4}, {3, 3}, {2, 7}};
  for (uint32_t seed = 1; seed <= 60; ++seed) {
    const NgramProposerOptions o = ranges[seed % ranges.size()];
    HistorySource src(seed);
    SCOPED_TRACE(absl::StrCat("seed ", seed, " ngram [", o.ngram_min, ", ", o.ngram_max, "]"));
    V prompt(src.Uniform(1, 40));
    for (int32_t& t : prompt) t = src.Next();
    TokenHistory h(prompt, o);
    ExpectSameAsScan(h, o);
    for (int op = 0; op < 300 && !::testing::Test::HasFatalFailure(); ++op) {
      const int what = src.Uniform(0, 19);
      if (what < 14) {  // a step's sampled token, or 1 + the accepted proposals
        V run(what < 8 ? 1 : src.Uniform(2, 9));
        for (int32_t& t : run) t = src.Next();
        h.Append(run);
      } else if (what < 17) {  // roll back to a shorter history (as far as to nothing)
        h.Truncate(src.Uniform(0, h.size()));
      } else if (what < 19) {  // replay / recompute: the same tokens, indexed anew
        h = TokenHistory(h.tokens(), o);
      } else {  // copies index independently
        TokenHistory copy = h;
        copy.Append(V{src.Next()});
        ExpectSameAsScan(copy, o);
      }
      ExpectSameAsScan(h, o);
    }
  }
}

TEST(TokenHistoryTest, WithoutAnIndexNothingIsProposed) {
  TokenHistory plain(V{1, 2, 1, 2, 1});
  EXPECT_TRUE(plain.ProposeNgram(4).empty());
  EXPECT_FALSE(plain.LongestNgramRecurs());
  plain.Append(V{2, 1});
  plain.Truncate(3);
  EXPECT_EQ(plain.tokens(), (V{1, 2, 1}));

  // An opted-out sequence drops its index: it keeps its tokens and proposes nothing from then on.
  TokenHistory h(V{5, 6, 7, 5, 6}, NgramProposerOptions{1, 2});
  EXPECT_EQ(h.ProposeNgram(2), (V{7, 5}));
  EXPECT_TRUE(h.LongestNgramRecurs());
  h.DropNgramIndex();
  EXPECT_TRUE(h.ProposeNgram(2).empty());
  EXPECT_FALSE(h.LongestNgramRecurs());
  h.Append(V{7, 5});
  h.Truncate(6);
  EXPECT_EQ(h.tokens(), (V{5, 6, 7, 5, 6, 7}));
  EXPECT_TRUE(h.ProposeNgram(2).empty());
}

}  // namespace
}  // namespace tpserve::coordinator
