// Paged-KV block pool: fixed num_blocks x block_size token slots, reference counts, prefix-cache reuse.
#include "coordinator/engine/block_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tpserve::coordinator {

BlockManager::BlockManager(const BlockManagerOptions& options)
    : num_blocks_(options.num_blocks),
      block_size_(options.block_size),
      enable_prefix_caching_(options.enable_prefix_caching),
      ref_counts_(options.num_blocks, 0),
      in_free_uncached_(options.num_blocks, true),
      cache_(options.num_blocks, options.block_size) {
  TP_CHECK(num_blocks_ > 0 && block_size_ > 0) << "num_blocks " << num_blocks_ << " block_size " << block_size_;
  for (int32_t b = 0; b < num_blocks_; ++b) free_uncached_.push_back(b);
}

std::vector<int32_t> BlockManager::MatchPrefix(absl::Span<const BlockHash> block_hashes,
                                               absl::Span<const int32_t> tokens, int max_blocks) const {
  std::vector<int32_t> hits;
  if (!enable_prefix_caching_) return hits;
  const int n = std::min<int>(max_blocks, static_cast<int>(block_hashes.size()));
  for (int i = 0; i < n; ++i) {
    const BlockHash parent = i == 0 ? kRootBlockHash : block_hashes[i - 1];
    auto block = cache_.Lookup(block_hashes[i], parent,
                               tokens.subspan(static_cast<size_t>(i) * block_size_, block_size_));
    if (!block) break;
    hits.push_back(*block);
  }
  return hits;
}

int BlockManager::NumFreeAfterSharing(absl::Span<const int32_t> blocks) const {
  int free = num_free_blocks();
  for (int32_t b : blocks) {
    if (ref_counts_[b] == 0) --free;  // evictable now, referenced after Share
  }
  return free;
}

void BlockManager::Share(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    if (ref_counts_[b] == 0) {
      TP_CHECK(cache_.IsEvictable(b)) << "sharing block " << b << " that is neither referenced nor cached";
      cache_.MarkInUse(b);
    }
    ++ref_counts_[b];
  }
}

absl::StatusOr<std::vector<int32_t>> BlockManager::Allocate(int n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: n = ", n, " must be >= 0"));
  if (n > num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", n, " blocks, ",
                                                     num_free_blocks(), " of ", num_blocks_, " free"));
  }
  std::vector<int32_t> out;
  out.reserve(n);
  while (static_cast<int>(out.size()) < n) {
    int32_t b;
    if (!free_uncached_.empty()) {
      b = free_uncached_.front();
      free_uncached_.pop_front();
      in_free_uncached_[b] = false;
    } else {
      auto evicted = cache_.EvictLru();
      TP_CHECK(evicted.has_value()) << "free count said a block was available";
      b = *evicted;
    }
    TP_CHECK(ref_counts_[b] == 0) << "block " << b << " handed out while referenced";
    ref_counts_[b] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockManager::Release(absl::Span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t b = *it;
    TP_CHECK(ref_counts_[b] > 0) << "releasing block " << b << " with refcount 0";
    if (--ref_counts_[b] > 0) continue;
    if (cache_.IsCached(b)) {
      cache_.MarkEvictable(b);
    } else {
      free_uncached_.push_back(b);
      in_free_uncached_[b] = true;
    }
  }
}

void BlockManager::CacheFullBlock(int32_t block, BlockHash hash, BlockHash parent,
                                  absl::Span<const int32_t> tokens) {
  if (!enable_prefix_caching_) return;
  TP_CHECK(ref_counts_[block] > 0) << "caching unreferenced block " << block;
  cache_.Insert(block, hash, parent, tokens);
}

absl::Status BlockManager::CheckConsistency(absl::Span<const int> expected_refs) const {
  if (static_cast<int>(expected_refs.size()) != num_blocks_) {
    return absl::InternalError(absl::StrCat("expected_refs has ", expected_refs.size(), " entries, pool has ",
                                            num_blocks_));
  }
  int referenced = 0, uncached_free = 0, evictable = 0;
  for (int32_t b = 0; b < num_blocks_; ++b) {
    if (ref_counts_[b] != expected_refs[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " refcount ", ref_counts_[b], " but ",
                                              expected_refs[b], " sequences hold it"));
    }
    const int states = (ref_counts_[b] > 0) + static_cast<int>(in_free_uncached_[b]) +
                       static_cast<int>(cache_.IsEvictable(b));
    if (states != 1) {
      return absl::InternalError(absl::StrCat("block ", b, " is in ", states, " states (refcount ",
                                              ref_counts_[b], ", free ", in_free_uncached_[b] ? 1 : 0,
                                              ", evictable ", cache_.IsEvictable(b) ? 1 : 0, ")"));
    }
    if (in_free_uncached_[b] && cache_.IsCached(b)) {
      return absl::InternalError(absl::StrCat("block ", b, " is both free-uncached and cached"));
    }
    referenced += ref_counts_[b] > 0;
    uncached_free += in_free_uncached_[b];
    evictable += cache_.IsEvictable(b);
  }
  if (uncached_free != static_cast<int>(free_uncached_.size()) || evictable != cache_.num_evictable()) {
    return absl::InternalError(absl::StrCat("free lists hold ", free_uncached_.size(), "+",
                                            cache_.num_evictable(), " blocks, flags say ", uncached_free, "+",
                                            evictable));
  }
  if (referenced + num_free_blocks() != num_blocks_) {
    return absl::InternalError(absl::StrCat("used ", referenced, " + free ", num_free_blocks(),
                                            " != total ", num_blocks_));
  }
  return absl::OkStatus();
}

void BlockManager::DropCachedBlocks() {
  for (int32_t b : cache_.Clear()) {
    free_uncached_.push_back(b);
    in_free_uncached_[b] = true;
  }
}

}  // namespace tpserve::coordinator
