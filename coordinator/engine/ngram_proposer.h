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
// Pure and stateless; the cost is O((ngram_max - ngram_min + 1) * len * n) per call in the worst case, which
// for the context lengths served (a few thousand tokens) is microseconds beside a model step.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tpserve::coordinator {

struct NgramProposerOptions {
  int ngram_min = 1;  // --ngram-min, >= 1
  int ngram_max = 4;  // --ngram-max, >= ngram_min
};

// INVALID_ARGUMENT naming the flag.
absl::Status ValidateNgramProposerOptions(const NgramProposerOptions& options);

class NgramProposer {
 public:
  explicit NgramProposer(const NgramProposerOptions& options) : options_(options) {}

  // Up to `k` proposed next tokens for a sequence whose tokens (prompt + generated) are `tokens`; empty when
  // no n-gram recurs or k <= 0.
  std::vector<int32_t> Propose(absl::Span<const int32_t> tokens, int k) const;

 private:
  NgramProposerOptions options_;
};

}  // namespace tpserve::coordinator
