// Prefix cache: maps hash-chained FULL KV blocks to block ids and keeps unreferenced ones in LRU order.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace tpserve::coordinator {

// Content hash of a full block chained with its predecessor's: H(parent_hash, token ids of the block).
// Two sequences share a block only when every block before it matched too.
using BlockHash = uint64_t;
// Parent of a sequence's first block.
inline constexpr BlockHash kRootBlockHash = 0x6a09e667f3bcc909ULL;

// Deterministic (same value in every process and run) so tests and logs are reproducible.
BlockHash HashBlockTokens(BlockHash parent, absl::Span<const int32_t> tokens);

// Appends to `hashes` the chained hashes of every full block of `tokens` not hashed yet
// (hashes->size() blocks are already hashed). Partial trailing blocks are never hashed.
void ExtendBlockHashes(absl::Span<const int32_t> tokens, int block_size, std::vector<BlockHash>* hashes);

// Counted in tokens with vLLM's semantics: queries = tokens of every admitted sequence, hits = tokens whose
// KV came from the cache. hit rate = hits / queries.
struct PrefixCacheStats {
  int64_t queries = 0;
  int64_t hits = 0;
};

// Index of cached full blocks. A cached block is immutable; it is either referenced by sequences (the
// BlockManager owns the reference counts) or "evictable" (refcount 0) and then sits in an LRU list from which
// allocation reclaims it. Lookups verify the stored parent hash and token ids, so a 64-bit hash collision
// degrades to a miss instead of serving another prompt's KV.
// Not thread-safe: owned by BlockManager, which the (single-threaded) scheduler serialises.
class PrefixCache {
 public:
  PrefixCache(int num_blocks, int block_size);

  // The block holding exactly these tokens after exactly this parent, if cached.
  std::optional<int32_t> Lookup(BlockHash hash, BlockHash parent, absl::Span<const int32_t> tokens) const;
  // Registers `block` (whose KV now holds `tokens`, block_size of them) under `hash`. Returns false and
  // changes nothing when the hash is already cached (another block holds the same content) or the block
  // is already cached under some hash.
  bool Insert(int32_t block, BlockHash hash, BlockHash parent, absl::Span<const int32_t> tokens);
  bool IsCached(int32_t block) const { return entries_[block].cached; }
  int num_cached_blocks() const { return static_cast<int>(by_hash_.size()); }

  // LRU of cached blocks nobody references. MarkEvictable appends at the most-recently-used end.
  void MarkEvictable(int32_t block);
  void MarkInUse(int32_t block);
  bool IsEvictable(int32_t block) const { return entries_[block].evictable; }
  int num_evictable() const { return static_cast<int>(lru_.size()); }
  // Drops the least recently used evictable block from the cache and returns it; nullopt when none.
  std::optional<int32_t> EvictLru();
  // Forgets every cached block, referenced or not. Returns the ones that were evictable (now plain free).
  std::vector<int32_t> Clear();

  const PrefixCacheStats& stats() const { return stats_; }
  void Record(int64_t query_tokens, int64_t hit_tokens) {
    stats_.queries += query_tokens;
    stats_.hits += hit_tokens;
  }

 private:
  struct Entry {
    bool cached = false;
    bool evictable = false;
    BlockHash hash = 0;
    BlockHash parent = 0;
    std::list<int32_t>::iterator lru_pos;
  };

  int block_size_;
  std::vector<Entry> entries_;           // [num_blocks]
  std::vector<int32_t> tokens_;          // [num_blocks * block_size]: content of cached blocks
  absl::flat_hash_map<BlockHash, int32_t> by_hash_;
  std::list<int32_t> lru_;               // front = least recently used
  PrefixCacheStats stats_;
};

}  // namespace tpserve::coordinator
