// Prompt-lookup ("n-gram") speculation: proposes the tokens that followed the most recent earlier occurrence of
// the sequence's last n tokens. Needs no second model; it pays off where the output copies its input
// (extraction, quoting, code edits, RAG answers) or repeats itself.
//
// Search order: n from ngram_max down to ngram_min; for each n, the latest start i < len - n with
// tokens[i, i + n) == tokens[len - n, len); the first hit wins and proposes the k tokens from i + n on, the
// copy continuing from its own output where it reaches the end (so a loop of period p < k proposes k tokens,
// as the loop will go on; an occurrence one token back in a run of one token proposes k of that token).
// A later occurrence is preferred because text that repeats tends to repeat its most recent form (vLLM's
// NgramProposer and llama.cpp's lookup decoding search the same way, longest n first).
//
// The search runs on an index built once per sequence and extended per token (NgramIndex), not by scanning the
// history: a scan costs O(len) per speculating sequence per step, which at a few thousand tokens of context and
// a full batch adds up to milliseconds per step on the engine thread. The index gives exactly the scan's
// proposals (tests/coordinator/token_history_test.cc checks it against a plain scan).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tpserve::coordinator {

struct NgramProposerOptions {
  int ngram_min = 1;  // --ngram-min, >= 1
  int ngram_max = 4;  // --ngram-max, >= ngram_min
};

// INVALID_ARGUMENT naming the flag.
absl::Status ValidateNgramProposerOptions(const NgramProposerOptions& options);

// Where every n-gram (n in [ngram_min, ngram_max]) of one token history last occurred with a token after it.
// For each n: a hash of the n-gram -> its latest end e (the n-gram is tokens[e - n, e)), and per end the
// previous end with the same hash, so a lookup walks past hash collisions (comparing tokens) and Truncate can
// restore what a dropped end replaced. Cost: O(ngram_max) hashing per appended token, O(ngram_max + k) per
// proposal (plus a rare collision), memory O((ngram_max - ngram_min + 1) * len).
//
// It holds positions, not tokens: every call takes the history it indexes, which only TokenHistory
// (token_history.h), its one user, keeps in step with it. Not thread-safe.
class NgramIndex {
 public:
  NgramIndex() = default;  // indexes nothing and proposes nothing
  explicit NgramIndex(const NgramProposerOptions& options);  // options must pass ValidateNgramProposerOptions

  bool indexes_any() const { return ngram_max_ >= ngram_min_; }
  int ngram_max() const { return ngram_max_; }

  // `tokens` is the indexed history with tokens appended (tokens.size() >= the length indexed so far): indexes
  // the n-grams that now have a token after them.
  void Extend(absl::Span<const int32_t> tokens);
  // `tokens` (the indexed history, whole) is about to keep only its first `len` tokens: forgets the n-gram
  // occurrences ending at len or later, restoring the earlier ones they had replaced.
  void Truncate(absl::Span<const int32_t> tokens, int len);

  // Up to `k` proposed next tokens for the indexed history `tokens`, by the search order above; empty when no
  // n-gram recurs or k <= 0.
  std::vector<int32_t> Propose(absl::Span<const int32_t> tokens, int k) const;
  // Whether the last `n` tokens of `tokens` (the indexed history) occurred earlier, n in [ngram_min, ngram_max].
  bool SuffixRecurs(absl::Span<const int32_t> tokens, int n) const;

 private:
  // [n - ngram_min]: the hash of the history's last n tokens (0 where n > len).
  std::vector<uint64_t> SuffixHashes(absl::Span<const int32_t> tokens) const;
  // The latest end e <= len - 1 with tokens[e - n, e) == tokens[len - n, len) (whose hash is `hash`), or -1.
  int LatestEarlierEnd(absl::Span<const int32_t> tokens, int n, uint64_t hash) const;
  // Calls fn(n, hash) for each indexed n <= end, hashing tokens[end - n, end).
  template <typename Fn>
  void ForEachNgramEndingAt(absl::Span<const int32_t> tokens, int end, Fn fn) const;

  int ngram_min_ = 1;
  int ngram_max_ = 0;  // < ngram_min_: no n indexed
  int indexed_len_ = 0;  // the history length indexed: every end e < indexed_len_ is in the maps
  std::vector<absl::flat_hash_map<uint64_t, int32_t>> latest_;  // [n - ngram_min]: hash -> latest end
  std::vector<std::vector<int32_t>> prev_;  // [n - ngram_min][e]: previous end with e's hash, or -1
};

}  // namespace tpserve::coordinator
