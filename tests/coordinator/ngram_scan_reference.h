// The plain scan that prompt-lookup proposals are defined by (coordinator/engine/ngram_proposer.h, "Search
// order"), kept as the reference the incremental index is tested against: n from ngram_max down to ngram_min,
// the latest earlier start first, the k tokens after it copied (continuing from the copy's own output).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "coordinator/engine/ngram_proposer.h"

namespace tpserve::coordinator::ngram_reference {

inline std::vector<int32_t> ScanNgramProposal(const NgramProposerOptions& options, const std::vector<int32_t>& tokens,
                                              int k) {
  const int len = static_cast<int>(tokens.size());
  if (k <= 0) return {};
  for (int n = std::min(options.ngram_max, len - 1); n >= options.ngram_min; --n) {
    for (int i = len - n - 1; i >= 0; --i) {  // i + n <= len - 1: a token follows the occurrence
      if (!std::equal(tokens.end() - n, tokens.end(), tokens.begin() + i)) continue;
      std::vector<int32_t> out;
      for (int j = 0; j < k; ++j) {
        const int at = i + n + j;
        out.push_back(at < len ? tokens[at] : out[at - len]);
      }
      return out;
    }
  }
  return {};
}

}  // namespace tpserve::coordinator::ngram_reference
