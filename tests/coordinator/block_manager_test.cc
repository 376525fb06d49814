// KV block pool and prefix cache: allocation, refcounts, hash chaining, LRU eviction, collision safety.
#include "coordinator/engine/block_manager.h"

#include <numeric>
#include <vector>

#include "coordinator/engine/prefix_cache.h"
#include "gtest/gtest.h"

namespace tpserve::coordinator {
namespace {

std::vector<int32_t> Iota(int n, int32_t first) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Owner counts a test expects, for CheckConsistency: one entry per block.
std::vector<int> Owners(int num_blocks, const std::vector<std::vector<int32_t>>& tables) {
  std::vector<int> owners(num_blocks, 0);
  for (const auto& t : tables) {
    for (int32_t b : t) ++owners[b];
  }
  return owners;
}

// Registers every block of `table` as the full blocks of `tokens`.
void CacheAll(BlockManager& bm, const std::vector<int32_t>& table, const std::vector<int32_t>& tokens) {
  std::vector<BlockHash> hashes;
  ExtendBlockHashes(tokens, bm.block_size(), &hashes);
  ASSERT_EQ(hashes.size(), table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    bm.CacheFullBlock(table[i], hashes[i], i == 0 ? kRootBlockHash : hashes[i - 1],
                      absl::MakeConstSpan(tokens).subspan(i * bm.block_size(), bm.block_size()));
  }
}

TEST(BlockHashTest, ChainsParentAndContent) {
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {1, 2, 3, 5};
  EXPECT_EQ(HashBlockTokens(kRootBlockHash, a), HashBlockTokens(kRootBlockHash, a));  // deterministic
  EXPECT_NE(HashBlockTokens(kRootBlockHash, a), HashBlockTokens(kRootBlockHash, b));
  // Same tokens after a different prefix must not match.
  EXPECT_NE(HashBlockTokens(HashBlockTokens(kRootBlockHash, a), a),
            HashBlockTokens(HashBlockTokens(kRootBlockHash, b), a));

  std::vector<BlockHash> hashes;
  const std::vector<int32_t> tokens = Iota(10, 7);  // 2 full blocks of 4 + 2 tokens
  ExtendBlockHashes(tokens, 4, &hashes);
  ASSERT_EQ(hashes.size(), 2u);  // partial block never hashed
  EXPECT_EQ(hashes[0], HashBlockTokens(kRootBlockHash, {7, 8, 9, 10}));
  EXPECT_EQ(hashes[1], HashBlockTokens(hashes[0], {11, 12, 13, 14}));
}

TEST(BlockManagerTest, AllocateReleaseAndUsage) {
  BlockManager bm({/*num_blocks=*/8, /*block_size=*/4, /*enable_prefix_caching=*/true});
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_DOUBLE_EQ(bm.usage(), 0.0);
  EXPECT_EQ(bm.BlocksFor(0), 0);
  EXPECT_EQ(bm.BlocksFor(4), 1);
  EXPECT_EQ(bm.BlocksFor(5), 2);

  auto a = bm.Allocate(3);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, (std::vector<int32_t>{0, 1, 2}));  // fresh pool hands out ids in order
  auto b = bm.Allocate(5);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
  EXPECT_TRUE(bm.CheckConsistency(Owners(8, {*a, *b})).ok());

  auto c = bm.Allocate(1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(bm.num_free_blocks(), 0);  // a failed allocation takes nothing

  bm.Release(*a);
  EXPECT_EQ(bm.num_free_blocks(), 3);
  EXPECT_DOUBLE_EQ(bm.usage(), 5.0 / 8.0);
  bm.Release(*b);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_TRUE(bm.CheckConsistency(Owners(8, {})).ok());
  EXPECT_EQ(bm.Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BlockManagerTest, SharedBlocksAreFreedByTheLastOwner) {
  BlockManager bm({4, 4, true});
  const std::vector<int32_t> tokens = Iota(8, 100);
  auto a = bm.Allocate(2);
  ASSERT_TRUE(a.ok());
  CacheAll(bm, *a, tokens);
  EXPECT_EQ(bm.num_cached_blocks(), 2);

  std::vector<BlockHash> hashes;
  ExtendBlockHashes(tokens, 4, &hashes);
  const std::vector<int32_t> hit = bm.MatchPrefix(hashes, tokens, 2);
  EXPECT_EQ(hit, *a);
  bm.Share(hit);
  EXPECT_EQ(bm.ref_count((*a)[0]), 2);
  EXPECT_EQ(bm.num_free_blocks(), 2);  // sharing costs nothing
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {*a, hit})).ok());

  bm.Release(*a);
  EXPECT_EQ(bm.ref_count((*a)[0]), 1);
  EXPECT_EQ(bm.num_free_blocks(), 2);
  bm.Release(hit);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_EQ(bm.num_cached_blocks(), 2);  // still cached, now evictable
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {})).ok());

  // Taking a reference on evictable blocks removes them from the free count.
  EXPECT_EQ(bm.NumFreeAfterSharing(hit), 2);
  bm.Share(hit);
  EXPECT_EQ(bm.num_free_blocks(), 2);
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {hit})).ok());
}

TEST(BlockManagerTest, MatchStopsAtFirstMissAndRespectsCap) {
  BlockManager bm({8, 4, true});
  const std::vector<int32_t> tokens = Iota(12, 1);
  auto a = bm.Allocate(3);
  ASSERT_TRUE(a.ok());
  CacheAll(bm, *a, tokens);

  std::vector<int32_t> other = tokens;
  other[5] = 999;  // second block differs -> the third cannot match either (chained)
  std::vector<BlockHash> h_other;
  ExtendBlockHashes(other, 4, &h_other);
  EXPECT_EQ(bm.MatchPrefix(h_other, other, 3), (std::vector<int32_t>{(*a)[0]}));

  std::vector<BlockHash> h;
  ExtendBlockHashes(tokens, 4, &h);
  EXPECT_EQ(bm.MatchPrefix(h, tokens, 2), (std::vector<int32_t>{(*a)[0], (*a)[1]}));
  EXPECT_EQ(bm.MatchPrefix(h, tokens, 3), *a);

  BlockManager off({8, 4, /*enable_prefix_caching=*/false});
  auto b = off.Allocate(3);
  ASSERT_TRUE(b.ok());
  CacheAll(off, *b, tokens);
  EXPECT_EQ(off.num_cached_blocks(), 0);
  EXPECT_TRUE(off.MatchPrefix(h, tokens, 3).empty());
}

TEST(BlockManagerTest, AllocationPrefersUncachedThenEvictsLeastRecentlyUsed) {
  BlockManager bm({6, 2, true});
  const std::vector<int32_t> p1 = {1, 2, 3, 4}, p2 = {5, 6, 7, 8};
  auto s1 = bm.Allocate(2);  // blocks 0, 1
  auto s2 = bm.Allocate(2);  // blocks 2, 3
  ASSERT_TRUE(s1.ok() && s2.ok());
  CacheAll(bm, *s1, p1);
  CacheAll(bm, *s2, p2);
  bm.Release(*s1);  // LRU: 1, 0   (released in reverse: the tail goes first)
  bm.Release(*s2);  // LRU: 1, 0, 3, 2
  EXPECT_EQ(bm.num_free_blocks(), 6);

  auto fresh = bm.Allocate(2);  // the two never-used blocks come first
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(*fresh, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(bm.num_cached_blocks(), 4);

  auto evicting = bm.Allocate(1);  // then the least recently used cached block: s1's tail
  ASSERT_TRUE(evicting.ok());
  EXPECT_EQ(*evicting, (std::vector<int32_t>{1}));
  EXPECT_EQ(bm.num_cached_blocks(), 3);
  EXPECT_FALSE(bm.is_cached(1));

  std::vector<BlockHash> h1;
  ExtendBlockHashes(p1, 2, &h1);
  EXPECT_EQ(bm.MatchPrefix(h1, p1, 2), (std::vector<int32_t>{0}));  // head survives, tail gone

  // Reusing s1's head refreshes it: after release it is the most recently used.
  bm.Share({0});
  bm.Release({0});  // LRU: 3, 2, 0
  auto next = bm.Allocate(2);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, (std::vector<int32_t>{3, 2}));
  EXPECT_TRUE(bm.CheckConsistency(Owners(6, {*fresh, *evicting, *next})).ok());
  bm.Release(*fresh);
  bm.Release(*evicting);
  bm.Release(*next);
  EXPECT_EQ(bm.num_free_blocks(), 6);
  EXPECT_TRUE(bm.CheckConsistency(Owners(6, {})).ok());
}

TEST(BlockManagerTest, DuplicateContentStaysUncached) {
  BlockManager bm({4, 2, true});
  const std::vector<int32_t> p = {9, 8};
  auto a = bm.Allocate(1);
  auto b = bm.Allocate(1);
  ASSERT_TRUE(a.ok() && b.ok());
  CacheAll(bm, *a, p);
  CacheAll(bm, *b, p);  // two sequences computed the same block at once
  EXPECT_TRUE(bm.is_cached((*a)[0]));
  EXPECT_FALSE(bm.is_cached((*b)[0]));
  bm.Release(*a);
  bm.Release(*b);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_EQ(bm.num_cached_blocks(), 1);
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {})).ok());
}

TEST(BlockManagerTest, DropCachedBlocksForgetsReferencedAndEvictableContent) {
  BlockManager bm({4, 2, true});
  const std::vector<int32_t> p = {1, 2, 3, 4};
  auto held = bm.Allocate(2);
  auto gone = bm.Allocate(1);
  ASSERT_TRUE(held.ok() && gone.ok());
  CacheAll(bm, *held, p);
  CacheAll(bm, *gone, {9, 9});
  bm.Release(*gone);  // evictable
  bm.DropCachedBlocks();
  EXPECT_EQ(bm.num_cached_blocks(), 0);
  EXPECT_EQ(bm.num_free_blocks(), 2);
  std::vector<BlockHash> h;
  ExtendBlockHashes(p, 2, &h);
  EXPECT_TRUE(bm.MatchPrefix(h, p, 2).empty());  // the held blocks' KV is stale too
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {*held})).ok());
  bm.Release(*held);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_TRUE(bm.CheckConsistency(Owners(4, {})).ok());
}

TEST(PrefixCacheTest, HashCollisionIsAMissNotAWrongHit) {
  PrefixCache cache(/*num_blocks=*/2, /*block_size=*/2);
  const BlockHash h = 42;  // forced: pretend two different blocks hash alike
  ASSERT_TRUE(cache.Insert(0, h, kRootBlockHash, {1, 2}));
  EXPECT_EQ(cache.Lookup(h, kRootBlockHash, {1, 2}), 0);
  EXPECT_FALSE(cache.Lookup(h, kRootBlockHash, {1, 3}).has_value());  // other tokens
  EXPECT_FALSE(cache.Lookup(h, /*parent=*/7, {1, 2}).has_value());   // other prefix
  EXPECT_FALSE(cache.Insert(1, h, kRootBlockHash, {5, 6}));          // hash already taken
  EXPECT_EQ(cache.num_cached_blocks(), 1);

  cache.MarkEvictable(0);
  EXPECT_EQ(cache.num_evictable(), 1);
  EXPECT_EQ(cache.EvictLru(), 0);
  EXPECT_FALSE(cache.Lookup(h, kRootBlockHash, {1, 2}).has_value());
  EXPECT_FALSE(cache.EvictLru().has_value());
  EXPECT_EQ(cache.num_cached_blocks(), 0);
}

}  // namespace
}  // namespace tpserve::coordinator
