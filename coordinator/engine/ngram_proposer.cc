// Implementation of coordinator/engine/ngram_proposer.h.
#include "coordinator/engine/ngram_proposer.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

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

NgramIndex::NgramIndex(const NgramProposerOptions& options)
    : ngram_min_(options.ngram_min),
      ngram_max_(options.ngram_max),
      latest_(std::max(0, options.ngram_max - options.ngram_min + 1)),
      prev_(latest_.size()) {
  TP_CHECK(ValidateNgramProposerOptions(options).ok()) << "n-gram options";
}

template <typename Fn>
void NgramIndex::ForEachNgramEndingAt(absl::Span<const int32_t> tokens, int end, Fn fn) const {
  // Hashed backwards from the end, so one pass gives every n: h(n) = mix(h(n - 1), tokens[end - n]).
  uint64_t h = 0;
  for (int n = 1; n <= std::min(ngram_max_, end); ++n) {
    h = absl::HashOf(h, tokens[end - n]);
    if (n >= ngram_min_) fn(n, h);
  }
}

void NgramIndex::Extend(absl::Span<const int32_t> tokens) {
  const int len = static_cast<int>(tokens.size());
  TP_CHECK(len >= indexed_len_) << "history shrank from " << indexed_len_ << " to " << len << " without Truncate";
  if (latest_.empty()) {
    indexed_len_ = len;
    return;
  }
  for (auto& p : prev_) p.resize(len, -1);
  // End e is indexed once a token follows it (e <= len - 1): only then can it propose something.
  for (int e = indexed_len_; e < len; ++e) {
    ForEachNgramEndingAt(tokens, e, [&](int n, uint64_t h) {
      auto [it, fresh] = latest_[n - ngram_min_].try_emplace(h, e);
      if (!fresh) {
        prev_[n - ngram_min_][e] = it->second;
        it->second = e;
      }
    });
  }
  indexed_len_ = len;
}

void NgramIndex::Truncate(absl::Span<const int32_t> tokens, int len) {
  TP_CHECK(static_cast<int>(tokens.size()) == indexed_len_ && len >= 0 && len <= indexed_len_)
      << "truncating an index of " << indexed_len_ << " tokens to " << len << " (history of " << tokens.size() << ")";
  // Latest first: each map entry then points at the end being dropped, and goes back to the one it replaced.
  for (int e = indexed_len_ - 1; e >= len && !latest_.empty(); --e) {
    ForEachNgramEndingAt(tokens, e, [&](int n, uint64_t h) {
      const int32_t before = prev_[n - ngram_min_][e];
      auto& latest = latest_[n - ngram_min_];
      if (before < 0) {
        latest.erase(h);
      } else {
        latest[h] = before;
      }
    });
  }
  for (auto& p : prev_) p.resize(len);
  indexed_len_ = len;
}

std::vector<uint64_t> NgramIndex::SuffixHashes(absl::Span<const int32_t> tokens) const {
  const int len = static_cast<int>(tokens.size());
  TP_CHECK(len == indexed_len_) << "index of " << indexed_len_ << " tokens asked about " << len;
  std::vector<uint64_t> hashes(latest_.size());
  ForEachNgramEndingAt(tokens, len, [&](int n, uint64_t h) { hashes[n - ngram_min_] = h; });
  return hashes;
}

int NgramIndex::LatestEarlierEnd(absl::Span<const int32_t> tokens, int n, uint64_t hash) const {
  const int len = static_cast<int>(tokens.size());
  if (n > len - 1) return -1;  // an earlier occurrence needs n tokens and one after them
  const auto& latest = latest_[n - ngram_min_];
  auto it = latest.find(hash);
  const int32_t* suffix = tokens.data() + (len - n);
  for (int e = it == latest.end() ? -1 : it->second; e >= 0; e = prev_[n - ngram_min_][e]) {
    if (std::equal(suffix, suffix + n, tokens.data() + (e - n))) return e;  // else a hash collision
  }
  return -1;
}

bool NgramIndex::SuffixRecurs(absl::Span<const int32_t> tokens, int n) const {
  TP_CHECK(n >= ngram_min_ && n <= ngram_max_) << "n = " << n << " is not indexed";
  return LatestEarlierEnd(tokens, n, SuffixHashes(tokens)[n - ngram_min_]) >= 0;
}

std::vector<int32_t> NgramIndex::Propose(absl::Span<const int32_t> tokens, int k) const {
  if (k <= 0 || latest_.empty()) return {};
  const int len = static_cast<int>(tokens.size());
  const std::vector<uint64_t> hashes = SuffixHashes(tokens);
  for (int n = ngram_max_; n >= ngram_min_; --n) {
    const int from = LatestEarlierEnd(tokens, n, hashes[n - ngram_min_]);
    if (from < 0) continue;
    // Copy k tokens from `from` on; a copy that runs into the suffix continues from its own output
    // (LZ77's overlapping copy), so a loop shorter than k is proposed for k tokens.
    std::vector<int32_t> out;
    out.reserve(k);
    for (int j = 0; j < k; ++j) {
      const int at = from + j;
      out.push_back(at < len ? tokens[at] : out[at - len]);
    }
    return out;
  }
  return {};
}

}  // namespace tpserve::coordinator
