// A sequence's token history (prompt + generated) together with the n-gram index over it, so the two can never
// disagree: the history changes only through Append and Truncate, which keep the index in step.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/types/span.h"
#include "coordinator/engine/ngram_proposer.h"

namespace tpserve::coordinator {

// Owned by one Sequence (sequence.h: the one copy of a request's tokens on the coordinator). Not thread-safe.
class TokenHistory {
 public:
  TokenHistory() = default;
  // `ngram`: the n-gram lengths to index for prompt-lookup proposals (--speculative-method ngram); without it
  // nothing is indexed and ProposeNgram proposes nothing. Indexing the prompt costs O(ngram_max) per token.
  explicit TokenHistory(std::vector<int32_t> tokens, std::optional<NgramProposerOptions> ngram = std::nullopt);

  const std::vector<int32_t>& tokens() const { return tokens_; }
  int size() const { return static_cast<int>(tokens_.size()); }

  void Append(absl::Span<const int32_t> tokens);
  // Keeps the first `len` tokens (len <= size()), the index with them. The scheduler never shortens a history
  // today (rejected proposals never enter it; preemption and replay keep it whole); a history that is cut
  // back keeps proposing exactly what a scan of the remaining tokens would.
  void Truncate(int len);
  // No n-gram index from now on (the sequence will never speculate with it again); frees its memory.
  void DropNgramIndex();

  // Prompt lookup (ngram_proposer.h): up to k tokens that followed the latest earlier occurrence of the last n
  // tokens, n from ngram_max down to ngram_min. Empty without an index, or when nothing recurs.
  std::vector<int32_t> ProposeNgram(int k) const { return ngram_.Propose(tokens_, k); }
  // Whether the last ngram_max tokens occurred earlier: the text has started repeating itself. False without
  // an index.
  bool LongestNgramRecurs() const;

 private:
  std::vector<int32_t> tokens_;
  NgramIndex ngram_;
};

}  // namespace tpserve::coordinator
