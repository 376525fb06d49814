// Implementation of coordinator/engine/ngram_proposer.h.
#include "coordinator/engine/ngram_proposer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tpserve::coordinator {

absl::Status ValidateNgramProposerOptions(const NgramProposerOptions& o) {
  if (o.ngram_min < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--ngram-min = ", o.ngram_min, " must be >= 1"));
  }
  if (o.ngram_max < o.ngram_min) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ngram-max = ", o.ngram_max, " must be >= --ngram-min = ", o.ngram_min));
  }
  return absl::OkStatus();
}

std::vector<int32_t> NgramProposer::Propose(absl::Span<const int32_t> tokens, int k) const {
  const int len = static_cast<int>(tokens.size());
  if (k <= 0) return {};
  for (int n = std::min(options_.ngram_max, len - 1); n >= options_.ngram_min; --n) {
    const int32_t* suffix = tokens.data() + (len - n);
    // Latest earlier start first; i + n <= len - 1 so at least one token follows the occurrence.
    for (int i = len - n - 1; i >= 0; --i) {
      if (!std::equal(suffix, suffix + n, tokens.data() + i)) continue;
      // Copy k tokens from `from` on; a copy that runs into the suffix continues from its own output
      // (LZ77's overlapping copy), so a loop shorter than k is proposed for k tokens.
      std::vector<int32_t> out;
      out.reserve(k);
      for (int j = 0; j < k; ++j) {
        const int at = i + n + j;
        out.push_back(at < len ? tokens[at] : out[at - len]);
      }
      return out;
    }
  }
  return {};
}

}  // namespace tpserve::coordinator
