// Paged attention of the CPU backend against the reference, for every supported ISA: several sequences
// of different lengths in one step (prefill from scratch, a prefill chunk on top of cached tokens,
// decode tokens), GQA ratios 1, 2 and 8, head_dim 128 and 8, shuffled (non-contiguous) block tables,
// and bitwise batch invariance of one token's output; and the bfloat16 cache (bf16 models) against the
// reference fed the same K/V rounded to bf16.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace tpserve::kernels {
namespace {

std::vector<float> RandomVec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct SeqPlan {
  int cached;      // tokens already in the cache before this step
  int new_tokens;  // query tokens this step (1 = decode)
};

// One step's host-side batch description plus the history writes that precede it.
struct Scenario {
  int nq, nk, hd, block_size = 16, num_blocks = 0, max_blocks = 0;
  std::vector<SeqPlan> seqs;
  std::vector<int32_t> block_tables, query_start, context_lens, slots, positions;
  std::vector<int32_t> hist_slots;  // slots of cached tokens, in order
  std::vector<float> hist_k, hist_v, k, v, q;

  AttentionBatch Step() const {
    AttentionBatch b;
    b.num_seqs = static_cast<int>(seqs.size());
    b.num_tokens = static_cast<int>(positions.size());
    b.max_blocks_per_seq = max_blocks;
    b.max_query_len = 0;
    b.max_context_len = 0;
    for (const SeqPlan& s : seqs) {
      b.max_query_len = std::max(b.max_query_len, s.new_tokens);
      b.max_context_len = std::max(b.max_context_len, s.cached + s.new_tokens);
    }
    b.query_start = query_start.data();
    b.context_lens = context_lens.data();
    b.block_tables = block_tables.data();
    b.slot_mapping = slots.data();
    b.positions = positions.data();
    return b;
  }
  AttentionBatch History() const {
    AttentionBatch b{};
    b.num_tokens = static_cast<int>(hist_slots.size());
    b.slot_mapping = hist_slots.data();
    return b;
  }
};

Scenario MakeScenario(int nq, int nk, int hd, const std::vector<SeqPlan>& seqs, uint32_t seed) {
  Scenario s;
  s.nq = nq;
  s.nk = nk;
  s.hd = hd;
  s.seqs = seqs;
  for (const SeqPlan& p : seqs) {
    s.max_blocks = std::max(s.max_blocks, (p.cached + p.new_tokens + s.block_size - 1) / s.block_size);
  }
  s.num_blocks = s.max_blocks * static_cast<int>(seqs.size()) + 3;
  std::vector<int32_t> ids(s.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  s.block_tables.assign(seqs.size() * s.max_blocks, -1);
  int next = 0;
  s.query_start.push_back(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int ctx = seqs[i].cached + seqs[i].new_tokens;
    for (int b = 0; b < (ctx + s.block_size - 1) / s.block_size; ++b) s.block_tables[i * s.max_blocks + b] = ids[next++];
    auto slot = [&](int p) { return s.block_tables[i * s.max_blocks + p / s.block_size] * s.block_size + p % s.block_size; };
    for (int p = 0; p < seqs[i].cached; ++p) s.hist_slots.push_back(slot(p));
    for (int p = seqs[i].cached; p < ctx; ++p) {
      s.slots.push_back(slot(p));
      s.positions.push_back(p);
    }
    s.query_start.push_back(static_cast<int32_t>(s.positions.size()));
    s.context_lens.push_back(ctx);
  }
  const size_t row = static_cast<size_t>(nk) * hd;
  s.hist_k = RandomVec(s.hist_slots.size() * row, seed + 1);
  s.hist_v = RandomVec(s.hist_slots.size() * row, seed + 2);
  s.k = RandomVec(s.positions.size() * row, seed + 3);
  s.v = RandomVec(s.positions.size() * row, seed + 4);
  // Larger q spreads the softmax so the test is not just averaging values.
  s.q = RandomVec(s.positions.size() * nq * hd, seed + 5);
  for (float& x : s.q) x *= 3.0f;
  return s;
}

// Writes history and this step's K/V into a fresh cache (layer 1 of 2), then runs attention.
std::vector<float> RunAttention(Backend& be, const Scenario& s, DType kv_dtype = DType::kF32) {
  KvCacheSpec spec{2, s.num_blocks, s.block_size, s.nk, s.hd};
  spec.dtype = kv_dtype;
  auto cache = be.CreateKvCache(spec);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (!s.hist_slots.empty()) be.WriteKv(**cache, 1, s.hist_k.data(), s.hist_v.data(), s.History());
  const AttentionBatch step = s.Step();
  be.WriteKv(**cache, 1, s.k.data(), s.v.data(), step);
  std::vector<float> out(s.q.size(), NAN);
  be.Attention(**cache, 1, s.q.data(), step, s.nq, 1.0f / std::sqrt(static_cast<float>(s.hd)), out.data());
  return out;
}

class CpuAttentionTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    auto be = CreateCpuBackend(CpuBackendOptions{2, GetParam()});
    if (!be.ok()) GTEST_SKIP() << CpuIsaName(GetParam()) << " not supported here: " << be.status();
    cpu_ = std::move(*be);
    ref_ = CreateReferenceBackend();
  }
  std::unique_ptr<Backend> cpu_, ref_;
};

const std::vector<SeqPlan> kMixedStep = {{0, 37}, {100, 1}, {300, 20}, {15, 1}, {0, 1}, {31, 2}};

TEST_P(CpuAttentionTest, MixedPrefillAndDecodeMatchReference) {
  struct Heads {
    int nq, nk, hd;
  };
  for (const Heads& h : {Heads{40, 40, 128}, Heads{40, 20, 128}, Heads{40, 5, 128}, Heads{8, 4, 8}, Heads{6, 3, 20}}) {
    const std::string what = std::string(CpuIsaName(GetParam())) + " nq=" + std::to_string(h.nq) +
                             " nk=" + std::to_string(h.nk) + " hd=" + std::to_string(h.hd);
    Scenario s = MakeScenario(h.nq, h.nk, h.hd, kMixedStep, 7);
    const auto got = RunAttention(*cpu_, s);
    const auto want = RunAttention(*ref_, s);
    int bad = 0;
    for (size_t i = 0; i < got.size() && bad < 5; ++i) {
      if (!(std::fabs(got[i] - want[i]) <= 2e-6 + 1e-4 * std::fabs(want[i]))) {
        ADD_FAILURE() << what << " [" << i << "] got " << got[i] << " want " << want[i];
        ++bad;
      }
    }
  }
}

// A bf16 cache stores K/V rounded to nearest-even bf16 and widens them exactly: the result is the float32
// computation on the rounded values.
TEST_P(CpuAttentionTest, Bf16CacheMatchesReferenceOnRoundedKv) {
  Scenario s = MakeScenario(40, 5, 128, kMixedStep, 13);
  Scenario rounded = s;
  for (auto* v : {&rounded.hist_k, &rounded.hist_v, &rounded.k, &rounded.v}) {
    for (float& x : *v) x = BF16ToF32(F32ToBF16(x));
  }
  const auto got = RunAttention(*cpu_, s, DType::kBF16);
  const auto want = RunAttention(*ref_, rounded);
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= 2e-6 + 1e-4 * std::fabs(want[i]))) {
      ADD_FAILURE() << CpuIsaName(GetParam()) << " bf16 cache [" << i << "] got " << got[i] << " want " << want[i];
      ++bad;
    }
  }
  auto one = CreateCpuBackend(CpuBackendOptions{1, GetParam()});
  ASSERT_TRUE(one.ok());
  const auto got_1t = RunAttention(**one, s, DType::kBF16);
  EXPECT_EQ(std::memcmp(got.data(), got_1t.data(), got.size() * 4), 0) << "1 vs 2 threads";
  KvCacheSpec f16{2, 4, 16, 5, 128};
  f16.dtype = DType::kF16;
  EXPECT_EQ(cpu_->CreateKvCache(f16).status().code(), absl::StatusCode::kInvalidArgument);
  f16.dtype = DType::kBF16;
  KvCacheSpec f32 = f16;
  f32.dtype = DType::kF32;
  EXPECT_EQ(cpu_->KvBlockBytes(f16) * 2, cpu_->KvBlockBytes(f32));
}

// A decode token's output is bitwise the same alone, inside the mixed step, and with 1 or 2 threads.
TEST_P(CpuAttentionTest, BatchInvariant) {
  auto one = CreateCpuBackend(CpuBackendOptions{1, GetParam()});
  ASSERT_TRUE(one.ok());
  Scenario mixed = MakeScenario(40, 5, 128, kMixedStep, 11);
  const auto in_batch = RunAttention(*cpu_, mixed);
  const auto in_batch_1t = RunAttention(**one, mixed);
  ASSERT_EQ(std::memcmp(in_batch.data(), in_batch_1t.data(), in_batch.size() * 4), 0) << "1 vs 2 threads";

  // Sequence 2 (300 cached + 20 new) alone, with the same data.
  Scenario alone = MakeScenario(40, 5, 128, {kMixedStep[2]}, 11);
  // Reuse the mixed scenario's inputs for sequence 2 so only the batch differs.
  const size_t row = 5 * 128, qrow = 40 * 128;
  size_t hist_off = 0;
  for (int i = 0; i < 2; ++i) hist_off += kMixedStep[i].cached;
  const int t0 = mixed.query_start[2], t1 = mixed.query_start[3];
  std::copy(mixed.hist_k.begin() + hist_off * row, mixed.hist_k.begin() + (hist_off + 300) * row, alone.hist_k.begin());
  std::copy(mixed.hist_v.begin() + hist_off * row, mixed.hist_v.begin() + (hist_off + 300) * row, alone.hist_v.begin());
  std::copy(mixed.k.begin() + t0 * row, mixed.k.begin() + t1 * row, alone.k.begin());
  std::copy(mixed.v.begin() + t0 * row, mixed.v.begin() + t1 * row, alone.v.begin());
  std::copy(mixed.q.begin() + t0 * qrow, mixed.q.begin() + t1 * qrow, alone.q.begin());
  const auto by_itself = RunAttention(*cpu_, alone);
  ASSERT_EQ(by_itself.size(), static_cast<size_t>(t1 - t0) * qrow);
  EXPECT_EQ(std::memcmp(by_itself.data(), in_batch.data() + t0 * qrow, by_itself.size() * 4), 0)
      << "sequence alone vs in the mixed batch";
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuAttentionTest,
                         ::testing::Values(CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAmx),
                         [](const ::testing::TestParamInfo<CpuIsa>& info) { return CpuIsaName(info.param); });

}  // namespace
}  // namespace tpserve::kernels
