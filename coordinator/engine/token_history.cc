// Implementation of coordinator/engine/token_history.h.
#include "coordinator/engine/token_history.h"

#include <utility>

#include "common/log.h"

namespace tpserve::coordinator {

TokenHistory::TokenHistory(std::vector<int32_t> tokens, std::optional<NgramProposerOptions> ngram)
    : tokens_(std::move(tokens)) {
  if (ngram.has_value()) ngram_ = NgramIndex(*ngram);
  ngram_.Extend(tokens_);
}

void TokenHistory::Append(absl::Span<const int32_t> tokens) {
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  ngram_.Extend(tokens_);
}

void TokenHistory::Truncate(int len) {
  TP_CHECK(len >= 0 && len <= size()) << "truncating " << size() << " tokens to " << len;
  ngram_.Truncate(tokens_, len);
  tokens_.resize(len);
}

void TokenHistory::DropNgramIndex() {
  ngram_ = NgramIndex();
  ngram_.Extend(tokens_);  // an empty index still follows the length
}

bool TokenHistory::LongestNgramRecurs() const {
  return ngram_.indexes_any() && ngram_.SuffixRecurs(tokens_, ngram_.ngram_max());
}

}  // namespace tpserve::coordinator
