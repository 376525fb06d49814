// Prefix cache: maps hash-chained FULL KV blocks to block ids and keeps unreferenced ones in LRU order.
#include "coordinator/engine/prefix_cache.h"

#include <algorithm>

#include "common/log.h"

namespace tpserve::coordinator {
namespace {

// splitmix64 finaliser: a cheap, well-mixed 64-bit permutation.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

BlockHash HashBlockTokens(BlockHash parent, absl::Span<const int32_t> tokens) {
  uint64_t h = Mix(parent ^ (static_cast<uint64_t>(tokens.size()) << 32));
  for (int32_t t : tokens) h = Mix(h ^ static_cast<uint32_t>(t));
  return h;
}

void ExtendBlockHashes(absl::Span<const int32_t> tokens, int block_size, std::vector<BlockHash>* hashes) {
  const size_t full = tokens.size() / block_size;
  while (hashes->size() < full) {
    const size_t b = hashes->size();
    const BlockHash parent = b == 0 ? kRootBlockHash : (*hashes)[b - 1];
    hashes->push_back(HashBlockTokens(parent, tokens.subspan(b * block_size, block_size)));
  }
}

PrefixCache::PrefixCache(int num_blocks, int block_size)
    : block_size_(block_size),
      entries_(num_blocks),
      tokens_(static_cast<size_t>(num_blocks) * block_size) {}

std::optional<int32_t> PrefixCache::Lookup(BlockHash hash, BlockHash parent,
                                           absl::Span<const int32_t> tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return std::nullopt;
  const int32_t block = it->second;
  const Entry& e = entries_[block];
  if (e.parent != parent || static_cast<int>(tokens.size()) != block_size_ ||
      !std::equal(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<size_t>(block) * block_size_)) {
    return std::nullopt;  // hash collision: never serve another prompt's KV
  }
  return block;
}

bool PrefixCache::Insert(int32_t block, BlockHash hash, BlockHash parent, absl::Span<const int32_t> tokens) {
  TP_CHECK(static_cast<int>(tokens.size()) == block_size_) << "only full blocks are cached";
  Entry& e = entries_[block];
  if (e.cached || by_hash_.contains(hash)) return false;
  by_hash_.emplace(hash, block);
  e.cached = true;
  e.hash = hash;
  e.parent = parent;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<size_t>(block) * block_size_);
  return true;
}

void PrefixCache::MarkEvictable(int32_t block) {
  Entry& e = entries_[block];
  TP_CHECK(e.cached && !e.evictable) << "block " << block;
  e.lru_pos = lru_.insert(lru_.end(), block);
  e.evictable = true;
}

void PrefixCache::MarkInUse(int32_t block) {
  Entry& e = entries_[block];
  TP_CHECK(e.cached && e.evictable) << "block " << block;
  lru_.erase(e.lru_pos);
  e.evictable = false;
}

std::optional<int32_t> PrefixCache::EvictLru() {
  if (lru_.empty()) return std::nullopt;
  const int32_t block = lru_.front();
  lru_.pop_front();
  Entry& e = entries_[block];
  by_hash_.erase(e.hash);
  e = Entry{};
  return block;
}

std::vector<int32_t> PrefixCache::Clear() {
  std::vector<int32_t> evictable(lru_.begin(), lru_.end());
  lru_.clear();
  for (const auto& [hash, block] : by_hash_) entries_[block] = Entry{};
  by_hash_.clear();
  return evictable;
}

}  // namespace tpserve::coordinator
