// Paged-KV block pool: fixed num_blocks x block_size token slots, reference counts, prefix-cache reuse.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/engine/prefix_cache.h"

namespace tpserve::coordinator {

struct BlockManagerOptions {
  int num_blocks = 0;   // ids 0 .. num_blocks-1 are what workers index in their KV tensors
  int block_size = 16;  // tokens per block
  bool enable_prefix_caching = true;
};

// Owns which blocks are in use. A block is in exactly one state:
//   referenced (refcount > 0; may also be cached if full and registered),
//   free-uncached (refcount 0, content meaningless), or
//   evictable (refcount 0, cached: its KV may be reused until allocation reclaims it, LRU first).
// "Free" for capacity purposes counts both free-uncached and evictable blocks (vLLM semantics).
// Allocation prefers free-uncached blocks and only then evicts cached ones, so cached prefixes live as long
// as possible. Not thread-safe: the scheduler (and through it the engine loop) serialises all access.
class BlockManager {
 public:
  explicit BlockManager(const BlockManagerOptions& options);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool prefix_caching_enabled() const { return enable_prefix_caching_; }
  // Blocks an allocation can get right now (free-uncached + evictable cached).
  int num_free_blocks() const {
    return static_cast<int>(free_uncached_.size()) + cache_.num_evictable();
  }
  int num_used_blocks() const { return num_blocks_ - num_free_blocks(); }
  // used / total in [0, 1].
  double usage() const { return static_cast<double>(num_used_blocks()) / num_blocks_; }
  int num_cached_blocks() const { return cache_.num_cached_blocks(); }
  int ref_count(int32_t block) const { return ref_counts_[block]; }
  bool is_cached(int32_t block) const { return cache_.IsCached(block); }
  // Blocks needed to hold `num_tokens` token slots.
  int BlocksFor(int64_t num_tokens) const {
    return static_cast<int>((num_tokens + block_size_ - 1) / block_size_);
  }

  // Longest run of cached blocks matching `block_hashes` (the chained hashes of `tokens`' full blocks),
  // at most `max_blocks` long. Takes no references.
  std::vector<int32_t> MatchPrefix(absl::Span<const BlockHash> block_hashes, absl::Span<const int32_t> tokens,
                                   int max_blocks) const;
  // Free blocks left after taking references on `blocks` (evictable ones among them stop being free).
  int NumFreeAfterSharing(absl::Span<const int32_t> blocks) const;
  // refcount++ on each block (cached blocks found by MatchPrefix).
  void Share(absl::Span<const int32_t> blocks);
  // `n` fresh blocks with refcount 1, or RESOURCE_EXHAUSTED (nothing taken) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int n);
  // refcount-- on each block in REVERSE order, so a sequence's tail blocks enter the LRU first and are
  // evicted before its (more shareable) prefix blocks.
  void Release(absl::Span<const int32_t> blocks);
  // Registers a referenced, now-full block under its chained hash so later sequences can reuse it.
  // No-op when prefix caching is off or the content is already cached in another block.
  void CacheFullBlock(int32_t block, BlockHash hash, BlockHash parent, absl::Span<const int32_t> tokens);

  // Forgets every cached block: after the workers lost their KV cache (a re-formed worker group), cached
  // content no longer exists anywhere. Evictable blocks become free-uncached; referenced ones keep their
  // owners but can no longer be matched.
  void DropCachedBlocks();
  void RecordPrefixQuery(int64_t query_tokens, int64_t hit_tokens) {
    if (enable_prefix_caching_) cache_.Record(query_tokens, hit_tokens);
  }
  const PrefixCacheStats& prefix_cache_stats() const { return cache_.stats(); }

  // Checks the state partition and counts against `expected_refs` (block -> number of owners, from the
  // scheduler's block tables). For tests and debug builds; returns INTERNAL naming the first violation.
  absl::Status CheckConsistency(absl::Span<const int> expected_refs) const;

 private:
  int num_blocks_;
  int block_size_;
  bool enable_prefix_caching_;
  std::vector<int> ref_counts_;         // [num_blocks]
  std::deque<int32_t> free_uncached_;   // refcount 0, not cached; popped from the front
  std::vector<bool> in_free_uncached_;  // [num_blocks], for consistency checks
  PrefixCache cache_;
};

}  // namespace tpserve::coordinator
