// Compares every CUDA backend op with the reference backend (kernels/reference) on real Llama-2-13B
// sizes (hidden 5120, MLP 13824, head_dim 128, 40 heads) and odd ones (5125). Skips without a GPU;
// the factory tests run everywhere and check that a missing driver/GPU is UNAVAILABLE, not a crash.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/rope_table.h"

namespace tpserve::kernels {
namespace {

std::vector<float> RandomVec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Values exactly representable in bf16, so a bf16 copy and the f32 original are the same numbers.
std::vector<float> RoundToBf16(std::vector<float> v) {
  for (auto& x : v) x = BF16ToF32(F32ToBF16(x));
  return v;
}

std::vector<uint16_t> To16(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = t == DType::kBF16 ? F32ToBF16(v[i]) : F32ToF16(v[i]);
  return out;
}

// |got - want| <= abs_tol + rel_tol * |want| element-wise; reports the worst element.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double abs_tol, double rel_tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double tol = abs_tol + rel_tol * std::fabs(want[i]);
    if (!(err <= tol)) ++bad;  // NaN counts as bad
    if (!(err - tol <= worst_excess)) {
      worst_excess = err - tol;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << "/" << got.size() << " elements out of tolerance; worst at "
                     << worst << ": got " << got[worst] << " want " << want[worst];
}

double Rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s / std::max<size_t>(v.size(), 1));
}

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device (or driver) on this machine";
    auto gpu = CreateCudaBackend(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
    ref_ = CreateReferenceBackend();
  }
  void TearDown() override {
    if (gpu_ == nullptr) return;
    for (void* p : buffers_) gpu_->Free(p);
  }

  // Device copy of host data, freed at TearDown.
  template <typename T>
  T* Dev(const std::vector<T>& host) {
    void* p = gpu_->Alloc(std::max<size_t>(host.size() * sizeof(T), 1));
    buffers_.push_back(p);
    if (!host.empty()) gpu_->Upload(p, host.data(), host.size() * sizeof(T));
    return static_cast<T*>(p);
  }
  float* DevZeros(size_t n) { return Dev(std::vector<float>(n, 0.0f)); }
  std::vector<float> Host(const float* dev, size_t n) {
    std::vector<float> h(n);
    gpu_->Download(h.data(), dev, n * sizeof(float));
    return h;
  }

  // A weight in `dtype` built from f32 values; `keep` owns the host copy for the reference.
  WeightView HostWeight(const std::vector<float>& f, DType dtype, int64_t rows, int64_t cols,
                        std::vector<uint16_t>& keep) {
    if (dtype == DType::kF32) return WeightView{f.data(), dtype, rows, cols};
    keep = To16(f, dtype);
    return WeightView{keep.data(), dtype, rows, cols};
  }
  WeightView DevWeight(const WeightView& host) {
    const size_t bytes = static_cast<size_t>(host.rows * host.cols) * DTypeSize(host.dtype);
    void* p = gpu_->Alloc(bytes);
    buffers_.push_back(p);
    gpu_->Upload(p, host.data, bytes);
    return WeightView{p, host.dtype, host.rows, host.cols};
  }

  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> ref_;
  std::vector<void*> buffers_;
};

TEST(CudaFactory, NoDeviceIsUnavailableAndBadIndexIsInvalid) {
  const int n = CudaDeviceCount();
  EXPECT_GE(n, 0);
  auto b = CreateCudaBackend(n == 0 ? 0 : n + 3);
  ASSERT_FALSE(b.ok());
  if (n == 0) {
    EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
  } else {
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << b.status();
  }
  EXPECT_FALSE(CreateCudaBackend(-1).ok());
}

TEST_F(CudaOpsTest, NameMemoryAndRoundTrip) {
  EXPECT_NE(gpu_->name().find("cuda:0"), std::string::npos) << gpu_->name();
  EXPECT_FALSE(gpu_->is_host());
  EXPECT_NE(gpu_->native_stream(), nullptr);
  EXPECT_GT(gpu_->FreeMemoryBytes(), 0u);
  auto src = RandomVec(5125, 1);
  float* d = Dev(src);
  EXPECT_EQ(Host(d, src.size()), src);
}

// Matmul: the GEMV path (m <= 8, fp32 x) is only an accumulation order away from the reference; the
// cuBLAS path rounds x to 16 bits, so its tolerance scales with the output's magnitude.
TEST_F(CudaOpsTest, MatmulBf16RealAndOddShapes) {
  struct Shape {
    int64_t m, n, k;
  };
  for (Shape s : {Shape{1, 13824, 5120}, Shape{8, 5120, 5120}, Shape{3, 5120, 13824}, Shape{9, 5120, 13824},
                  Shape{64, 1024, 5120}, Shape{1, 37, 5125}, Shape{5, 37, 5125}, Shape{17, 37, 5125},
                  Shape{2, 5125, 64}}) {
    SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    auto x = RandomVec(s.m * s.k, 10 + s.m), wf = RandomVec(s.n * s.k, 20 + s.n, -0.05f, 0.05f);
    std::vector<uint16_t> keep;
    WeightView hw = HostWeight(wf, DType::kBF16, s.n, s.k, keep);
    std::vector<float> want(s.m * s.n);
    ref_->Matmul(x.data(), s.m, hw, want.data());
    float* y = DevZeros(want.size());
    gpu_->Matmul(Dev(x), s.m, DevWeight(hw), y);
    const double scale = Rms(want);
    if (s.m <= 8) {
      ExpectClose(Host(y, want.size()), want, 1e-5 * scale, 1e-4, "bf16 gemv");
    } else {
      ExpectClose(Host(y, want.size()), want, 2e-2 * scale, 1e-2, "bf16 cublas");
    }
  }
}

TEST_F(CudaOpsTest, MatmulF16AndF32) {
  for (DType dt : {DType::kF16, DType::kF32}) {
    for (int64_t m : {1, 4, 12}) {
      const int64_t n = 333, k = 5125;
      SCOPED_TRACE(testing::Message() << DTypeName(dt) << " m=" << m);
      auto x = RandomVec(m * k, 30 + m), wf = RandomVec(n * k, 40, -0.05f, 0.05f);
      std::vector<uint16_t> keep;
      WeightView hw = HostWeight(wf, dt, n, k, keep);
      std::vector<float> want(m * n);
      ref_->Matmul(x.data(), m, hw, want.data());
      float* y = DevZeros(want.size());
      gpu_->Matmul(Dev(x), m, DevWeight(hw), y);
      const double scale = Rms(want);
      const bool rounded_x = dt == DType::kF16 && m > 8;
      ExpectClose(Host(y, want.size()), want, (rounded_x ? 5e-3 : 1e-5) * scale, rounded_x ? 5e-3 : 1e-4,
                  "matmul");
    }
  }
}

// Within the GEMV regime (m <= 8) a row's output is bitwise the same whatever else is in the batch.
TEST_F(CudaOpsTest, GemvRowsAreBatchInvariant) {
  const int64_t n = 5120, k = 5120;
  auto x = RandomVec(8 * k, 50);
  std::vector<uint16_t> keep;
  WeightView w = DevWeight(HostWeight(RandomVec(n * k, 51, -0.05f, 0.05f), DType::kBF16, n, k, keep));
  float* dx = Dev(x);
  float* y8 = DevZeros(8 * n);
  gpu_->Matmul(dx, 8, w, y8);
  const auto full = Host(y8, 8 * n);
  for (int64_t m = 1; m <= 8; ++m) {
    // Rows [8 - m, 8) alone.
    float* ym = DevZeros(m * n);
    gpu_->Matmul(dx + (8 - m) * k, m, w, ym);
    const auto part = Host(ym, m * n);
    EXPECT_EQ(0, std::memcmp(part.data(), full.data() + (8 - m) * n, m * n * sizeof(float))) << "m=" << m;
  }
}

TEST_F(CudaOpsTest, EmbeddingVocabSplit) {
  for (DType dt : {DType::kBF16, DType::kF32}) {
    const int64_t rows = 100, dim = 5125, vocab_begin = 50;
    auto tf = RandomVec(rows * dim, 60);
    std::vector<uint16_t> keep;
    WeightView ht = HostWeight(tf, dt, rows, dim, keep);
    std::vector<int32_t> ids = {50, 149, 0, 49, 150, 77, 3000, 51};
    std::vector<float> want(ids.size() * dim);
    ref_->Embedding(ids.data(), ids.size(), ht, vocab_begin, want.data());
    float* out = DevZeros(want.size());
    gpu_->Embedding(Dev(ids), ids.size(), DevWeight(ht), vocab_begin, out);
    EXPECT_EQ(Host(out, want.size()), want) << DTypeName(dt);
  }
}

TEST_F(CudaOpsTest, RmsNormAndAddRmsNorm) {
  for (int64_t cols : {5120, 5125, 64}) {
    for (DType dt : {DType::kBF16, DType::kF32}) {
      SCOPED_TRACE(testing::Message() << "cols=" << cols << " " << DTypeName(dt));
      const int64_t rows = 7;
      auto x = RandomVec(rows * cols, 70, -3.0f, 3.0f), wf = RandomVec(cols, 71, 0.5f, 1.5f);
      auto r = RandomVec(rows * cols, 72, -3.0f, 3.0f);
      std::vector<uint16_t> keep;
      WeightView hw = HostWeight(wf, dt, 1, cols, keep);
      WeightView dw = DevWeight(hw);

      std::vector<float> want(x.size());
      ref_->RmsNorm(x.data(), rows, hw, 1e-5f, want.data());
      float* dx = Dev(x);
      float* out = DevZeros(x.size());
      gpu_->RmsNorm(dx, rows, dw, 1e-5f, out);
      ExpectClose(Host(out, x.size()), want, 1e-5, 1e-5, "rmsnorm");
      gpu_->RmsNorm(dx, rows, dw, 1e-5f, dx);  // in place
      ExpectClose(Host(dx, x.size()), want, 1e-5, 1e-5, "rmsnorm in place");

      auto ref_res = r;
      std::vector<float> want2(x.size());
      ref_->AddRmsNorm(ref_res.data(), x.data(), rows, hw, 1e-5f, want2.data());
      float* dres = Dev(r);
      float* out2 = DevZeros(x.size());
      gpu_->AddRmsNorm(dres, Dev(x), rows, dw, 1e-5f, out2);
      ExpectClose(Host(dres, x.size()), ref_res, 0, 0, "residual");
      ExpectClose(Host(out2, x.size()), want2, 1e-5, 1e-5, "add+rmsnorm");
    }
  }
}

TEST_F(CudaOpsTest, SiluMulGatherRows) {
  for (int64_t inter : {13824, 5125}) {
    const int64_t rows = 3;
    auto gu = RandomVec(rows * 2 * inter, 82, -6.0f, 6.0f);
    std::vector<float> want(rows * inter);
    ref_->SiluMul(gu.data(), rows, inter, want.data());
    float* out = DevZeros(want.size());
    gpu_->SiluMul(Dev(gu), rows, inter, out);
    ExpectClose(Host(out, want.size()), want, 1e-6, 1e-5, "silu*mul");
  }

  const int64_t dim = 5125;
  auto src = RandomVec(6 * dim, 83);
  std::vector<int32_t> rows = {5, 0, 3, 3};
  std::vector<float> want(rows.size() * dim);
  ref_->GatherRows(src.data(), rows.data(), rows.size(), dim, want.data());
  float* out = DevZeros(want.size());
  gpu_->GatherRows(Dev(src), Dev(rows), rows.size(), dim, out);
  EXPECT_EQ(Host(out, want.size()), want);
}

TEST_F(CudaOpsTest, Rope) {
  struct Case {
    int nq, nk, hd;
  };
  for (Case c : {Case{40, 40, 128}, Case{8, 4, 8}, Case{5, 1, 2}}) {
    SCOPED_TRACE(testing::Message() << "nq=" << c.nq << " nk=" << c.nk << " hd=" << c.hd);
    std::vector<int32_t> pos = {0, 1, 17, 511, 2047, 4095};
    const int64_t n = pos.size();
    auto q = RandomVec(n * c.nq * c.hd, 90), k = RandomVec(n * c.nk * c.hd, 91);
    auto dq = Dev(q);
    auto dk = Dev(k);
    gpu_->Rope(dq, dk, Dev(pos), n, c.nq, c.nk, c.hd, 10000.0f);
    ref_->Rope(q.data(), k.data(), pos.data(), n, c.nq, c.nk, c.hd, 10000.0f);
    // Angles up to 4095 rad in float32: an ulp of inv_freq moves them by ~2.5e-4.
    ExpectClose(Host(dq, q.size()), q, 2e-3, 1e-4, "rope q");
    ExpectClose(Host(dk, k.size()), k, 2e-3, 1e-4, "rope k");
  }
}

// GPU top-k / argmax against the host implementation at the 13B vocab (32000; TP=2's all-gather layout of two
// 16000-id halves) and an odd padded one: ids and logits exact, log-sum-exp to float32 summation order.
TEST_F(CudaOpsTest, TopKAndArgmax) {
  struct Case {
    int64_t rows;
    int parts;
    int64_t part_len, vocab;
    int k;
  };
  for (Case c : {Case{1, 1, 32000, 32000, 1}, Case{8, 1, 32000, 32000, 21}, Case{5, 2, 16000, 32000, 32},
                 Case{3, 4, 1283, 5125, 1}, Case{2, 4, 1283, 5125, 20}}) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " parts=" << c.parts << " vocab=" << c.vocab
                                    << " k=" << c.k);
    auto l = RandomVec(c.rows * c.parts * c.part_len, 95 + c.k, -8.0f, 8.0f);
    for (size_t i = 0; i < l.size(); i += 97) l[i] = 8.5f;  // exact ties at the top
    l[1] = std::nanf("");
    std::vector<int32_t> wi(c.rows * c.k);
    std::vector<float> wv(c.rows * c.k), wl(c.rows);
    HostTopK(l.data(), c.rows, c.parts, c.part_len, c.vocab, c.k, wi.data(), wv.data(), wl.data());
    int32_t* gi = Dev(std::vector<int32_t>(c.rows * c.k, -1));
    float* gv = DevZeros(c.rows * c.k);
    float* gl = DevZeros(c.rows);
    gpu_->TopK(Dev(l), c.rows, c.parts, c.part_len, c.vocab, c.k, gi, gv, gl);
    std::vector<int32_t> ids(wi.size());
    gpu_->Download(ids.data(), gi, ids.size() * sizeof(int32_t));
    EXPECT_EQ(ids, wi);
    EXPECT_EQ(Host(gv, wv.size()), wv);
    ExpectClose(Host(gl, wl.size()), wl, 1e-5, 1e-5, "lse");
  }
}

TEST_F(CudaOpsTest, KvCacheSpecValidationAndBlockBytes) {
  KvCacheSpec spec{40, 4, 16, 40, 128};
  spec.dtype = DType::kF32;  // float32 models keep a float32 cache
  EXPECT_EQ(gpu_->KvBlockBytes(spec), 40u * 2 * 16 * 40 * 128 * 4);
  spec.dtype = DType::kBF16;
  EXPECT_EQ(gpu_->KvBlockBytes(spec), 40u * 2 * 16 * 40 * 128 * 2);
  auto cache = gpu_->CreateKvCache(spec);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ((*cache)->bytes(), gpu_->KvBlockBytes(spec) * 4);
  KvCacheSpec bad = spec;
  bad.head_dim = 300;
  EXPECT_EQ(gpu_->CreateKvCache(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = spec;
  bad.num_blocks = 0;
  EXPECT_EQ(gpu_->CreateKvCache(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = spec;
  bad.dtype = DType::kF16;
  EXPECT_EQ(gpu_->CreateKvCache(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// One sequence of the attention test: `history` tokens already cached, `query` tokens this step.
struct SeqCase {
  int history;
  int query;
};

struct AttentionCase {
  int nq, nk, hd, block_size;
  std::vector<SeqCase> seqs;
  DType kv_dtype = DType::kBF16;
};

// Host-side AttentionBatch arrays for `c` with shuffled (non-contiguous) block tables.
struct BatchArrays {
  std::vector<int32_t> query_start, context_lens, block_tables, slot_mapping, positions;
  std::vector<int32_t> hist_slots;  // slots of the history tokens, in sequence order
  int max_blocks = 0, max_query = 0, max_context = 0, num_tokens = 0, num_hist = 0, num_blocks = 0;
};

BatchArrays MakeBatch(const AttentionCase& c, uint32_t seed) {
  BatchArrays b;
  for (const auto& s : c.seqs) {
    const int ctx = s.history + s.query;
    b.max_blocks = std::max(b.max_blocks, (ctx + c.block_size - 1) / c.block_size);
    b.max_query = std::max(b.max_query, s.query);
    b.max_context = std::max(b.max_context, ctx);
  }
  b.num_blocks = b.max_blocks * static_cast<int>(c.seqs.size()) + 3;
  std::vector<int32_t> perm(b.num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  b.block_tables.assign(c.seqs.size() * b.max_blocks, 0);
  b.query_start.push_back(0);
  int next = 0;
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const auto& s = c.seqs[i];
    const int ctx = s.history + s.query;
    for (int j = 0; j < b.max_blocks; ++j) b.block_tables[i * b.max_blocks + j] = perm[next++];
    auto slot = [&](int p) { return b.block_tables[i * b.max_blocks + p / c.block_size] * c.block_size + p % c.block_size; };
    for (int p = 0; p < s.history; ++p) b.hist_slots.push_back(slot(p));
    for (int p = s.history; p < ctx; ++p) {
      b.slot_mapping.push_back(slot(p));
      b.positions.push_back(p);
    }
    b.query_start.push_back(b.query_start.back() + s.query);
    b.context_lens.push_back(ctx);
  }
  b.num_tokens = b.query_start.back();
  b.num_hist = static_cast<int>(b.hist_slots.size());
  return b;
}

// Decode tokens and fp32-cache prefills run float32 arithmetic: tight tolerance. Prefill chunks of a
// bf16 cache with head_dim % 16 == 0 run on tensor cores (kernels/cuda/prefill_attention_mma.cu,
// PrefillAttentionUsesMma), which round q and the softmax weights to bf16 as FlashAttention-2 does
// (relative 2^-9 each): a bf16 tolerance for those rows.
void ExpectAttentionClose(const AttentionCase& c, const std::vector<float>& got, const std::vector<float>& want,
                          const std::string& what) {
  const bool mma = c.kv_dtype == DType::kBF16 && c.hd % 16 == 0 && c.hd <= 256;
  std::vector<float> got_f32, want_f32, got_mma, want_mma;
  size_t row = 0;
  const size_t width = static_cast<size_t>(c.nq) * c.hd;
  for (const SeqCase& s : c.seqs) {
    const bool on_mma = mma && s.query > 1;
    auto& g = on_mma ? got_mma : got_f32;
    auto& w = on_mma ? want_mma : want_f32;
    const size_t lo = row * width, hi = (row + s.query) * width;
    ASSERT_LE(hi, got.size());
    g.insert(g.end(), got.begin() + lo, got.begin() + hi);
    w.insert(w.end(), want.begin() + lo, want.begin() + hi);
    row += s.query;
  }
  if (!got_f32.empty()) ExpectClose(got_f32, want_f32, 2e-5, 2e-4, what);
  if (!got_mma.empty()) ExpectClose(got_mma, want_mma, 1e-2, 1e-2, what + " (prefill on tensor cores)");
}

class CudaAttentionTest : public CudaOpsTest {
 protected:
  // The step's AttentionBatch over host arrays (reference) and over device copies (GPU).
  void Batches(const AttentionCase& c, const BatchArrays& b, AttentionBatch* host, AttentionBatch* dev) {
    AttentionBatch& br = *host;
    br.num_seqs = static_cast<int>(c.seqs.size());
    br.num_tokens = b.num_tokens;
    br.max_blocks_per_seq = b.max_blocks;
    br.max_query_len = b.max_query;
    br.max_context_len = b.max_context;
    br.query_start = b.query_start.data();
    br.context_lens = b.context_lens.data();
    br.block_tables = b.block_tables.data();
    br.slot_mapping = b.slot_mapping.data();
    br.positions = b.positions.data();
    *dev = br;
    dev->query_start = Dev(b.query_start);
    dev->context_lens = Dev(b.context_lens);
    dev->block_tables = Dev(b.block_tables);
    dev->slot_mapping = Dev(b.slot_mapping);
    dev->positions = Dev(b.positions);
  }

  // Writes history + this step's K/V into both caches, runs Attention, returns {gpu, reference}.
  void Run(const AttentionCase& c, uint32_t seed, std::vector<float>* got, std::vector<float>* want) {
    const BatchArrays b = MakeBatch(c, seed);
    const int kvw = c.nk * c.hd;
    // bf16 cache: bf16-exact K/V so it and the reference's f32 cache hold the same numbers. f32 cache:
    // K/V are not bf16-exact, so a cache that rounded them would miss the tolerance.
    auto kv_values = [&](size_t n, uint32_t sd) {
      auto v = RandomVec(n, sd);
      return c.kv_dtype == DType::kBF16 ? RoundToBf16(std::move(v)) : v;
    };
    auto hk = kv_values(static_cast<size_t>(b.num_hist) * kvw, seed + 1);
    auto hv = kv_values(static_cast<size_t>(b.num_hist) * kvw, seed + 2);
    auto k = kv_values(static_cast<size_t>(b.num_tokens) * kvw, seed + 3);
    auto v = kv_values(static_cast<size_t>(b.num_tokens) * kvw, seed + 4);
    auto q = RandomVec(static_cast<size_t>(b.num_tokens) * c.nq * c.hd, seed + 5, -2.0f, 2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    KvCacheSpec spec{2, b.num_blocks, c.block_size, c.nk, c.hd, c.kv_dtype};
    const int layer = 1;

    auto rc = ref_->CreateKvCache(spec);
    auto gc = gpu_->CreateKvCache(spec);
    ASSERT_TRUE(rc.ok()) << rc.status();
    ASSERT_TRUE(gc.ok()) << gc.status();

    // History: one WriteKv over all cached tokens (only slot_mapping / num_tokens are read).
    AttentionBatch hist_r;
    hist_r.num_tokens = b.num_hist;
    hist_r.slot_mapping = b.hist_slots.data();
    AttentionBatch hist_g = hist_r;
    hist_g.slot_mapping = Dev(b.hist_slots);
    if (b.num_hist > 0) {
      ref_->WriteKv(**rc, layer, hk.data(), hv.data(), hist_r);
      gpu_->WriteKv(**gc, layer, Dev(hk), Dev(hv), hist_g);
    }

    AttentionBatch br, bg;
    Batches(c, b, &br, &bg);

    want->assign(q.size(), 0.0f);
    ref_->WriteKv(**rc, layer, k.data(), v.data(), br);
    ref_->Attention(**rc, layer, q.data(), br, c.nq, scale, want->data());
    float* out = DevZeros(q.size());
    gpu_->WriteKv(**gc, layer, Dev(k), Dev(v), bg);
    gpu_->Attention(**gc, layer, Dev(q), bg, c.nq, scale, out);
    *got = Host(out, q.size());
  }
};

TEST_F(CudaAttentionTest, MixedPrefillAndDecodeMatchesReference) {
  // Prefill chunks from scratch and after history (several 16-query and 32-key tiles), decodes with
  // one to seven split-K chunks of kDecodeSplitKeys (256) keys, and a 1-token "chunk" right after a history.
  const std::vector<SeqCase> seqs = {{0, 37}, {100, 20}, {699, 1}, {5, 1}, {1600, 1}, {0, 2}, {511, 1}, {64, 1}};
  for (AttentionCase c : {AttentionCase{40, 40, 128, 16, seqs}, AttentionCase{40, 8, 128, 16, seqs},
                          AttentionCase{8, 4, 8, 4, seqs}, AttentionCase{6, 3, 80, 16, seqs},
                          AttentionCase{4, 4, 256, 8, seqs}, AttentionCase{40, 40, 128, 16, seqs, DType::kF32},
                          AttentionCase{6, 3, 80, 16, seqs, DType::kF32}, AttentionCase{8, 4, 8, 4, seqs, DType::kF32},
                          // head_dim not a multiple of a 16-byte vector: the element-wise decode path
                          AttentionCase{4, 2, 36, 16, seqs}, AttentionCase{4, 2, 6, 16, seqs, DType::kF32}}) {
    SCOPED_TRACE(testing::Message() << "nq=" << c.nq << " nk=" << c.nk << " hd=" << c.hd << " bs=" << c.block_size
                                    << " kv " << DTypeName(c.kv_dtype));
    std::vector<float> got, want;
    Run(c, 100 + c.hd, &got, &want);
    ExpectAttentionClose(c, got, want, "attention");
  }
}

TEST_F(CudaAttentionTest, PrefillOnlyAndDecodeOnlyBatches) {
  for (AttentionCase c : {AttentionCase{40, 40, 128, 16, {{0, 300}}}, AttentionCase{40, 40, 128, 16, {{30, 129}, {0, 17}}},
                          AttentionCase{40, 40, 128, 16, {{3000, 1}, {1, 1}, {1023, 1}, {1024, 1}}}}) {
    std::vector<float> got, want;
    Run(c, 200, &got, &want);
    ExpectAttentionClose(c, got, want, "attention");
  }
}

// Few heads, short contexts: every attention path (prefill tiles, one- and multi-chunk decodes, the
// combine) in a grid small enough for compute-sanitizer's memcheck and racecheck (scripts/gpu-check.sh).
TEST_F(CudaAttentionTest, SmallMixedBatchForSanitizers) {
  const std::vector<SeqCase> seqs = {{0, 37}, {600, 1}, {5, 1}, {20, 3}};
  for (AttentionCase c : {AttentionCase{4, 2, 128, 16, seqs}, AttentionCase{4, 2, 36, 16, seqs, DType::kF32}}) {
    std::vector<float> got, want;
    Run(c, 400, &got, &want);
    ExpectAttentionClose(c, got, want, "attention");
  }
}

// A decode token's output is bitwise the same alone or inside a mixed batch with a longer context
// (more split-K chunks in the grid), prefills and other decodes.
TEST_F(CudaAttentionTest, DecodeIsBatchInvariant) {
  const AttentionCase alone{40, 40, 128, 16, {{1200, 1}}};
  const AttentionCase mixed{40, 40, 128, 16, {{1200, 1}, {0, 45}, {2500, 1}, {300, 1}}};
  std::vector<float> a, b, want;
  // Same seed: the first sequence's history, K/V and q are the same prefix of each random stream;
  // only the block placement differs.
  Run(alone, 300, &a, &want);
  ExpectAttentionClose(alone, a, want, "attention alone");
  Run(mixed, 300, &b, &want);
  ExpectAttentionClose(mixed, b, want, "attention mixed");
  const size_t row = 40 * 128;
  ASSERT_GE(b.size(), row);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), row * sizeof(float)));
}

// The fused RoPE + KV write (a cos / sin table for the first 16 positions, the rest computed in the kernel)
// against the reference's Rope then WriteKv: q and k to float32 rounding (the table holds the reference's
// numbers), and the cache through attention over it.
TEST_F(CudaAttentionTest, RopeWriteKvMatchesRopeThenWriteKv) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const AttentionCase c{40, 8, 128, 16, {{0, 40}}, dtype};
    const BatchArrays b = MakeBatch(c, 600);
    const int n = b.num_tokens;
    auto q = RandomVec(static_cast<size_t>(n) * c.nq * c.hd, 601, -2.0f, 2.0f);
    auto k = RandomVec(static_cast<size_t>(n) * c.nk * c.hd, 602);
    auto v = RandomVec(static_cast<size_t>(n) * c.nk * c.hd, 603);
    const int table_positions = 16;
    const float theta = 10000.0f;
    const std::vector<float> table = RopeCosSinTable(theta, c.hd, table_positions);
    KvCacheSpec spec{1, b.num_blocks, c.block_size, c.nk, c.hd, dtype};
    auto rc = ref_->CreateKvCache(spec);
    auto gc = gpu_->CreateKvCache(spec);
    ASSERT_TRUE(rc.ok() && gc.ok());
    AttentionBatch br, bg;
    Batches(c, b, &br, &bg);
    float* dq = Dev(q);
    float* dk = Dev(k);
    gpu_->RopeWriteKv(dq, dk, Dev(v), c.nq, c.nk, c.hd, theta, Dev(table), table_positions, **gc, 0, bg);
    ref_->Rope(q.data(), k.data(), b.positions.data(), n, c.nq, c.nk, c.hd, theta);
    ref_->WriteKv(**rc, 0, k.data(), v.data(), br);
    ExpectClose(Host(dq, q.size()), q, 1e-6, 1e-6, "rope q");
    ExpectClose(Host(dk, k.size()), k, 1e-6, 1e-6, "rope k");
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    std::vector<float> want(q.size());
    ref_->Attention(**rc, 0, q.data(), br, c.nq, scale, want.data());
    float* out = DevZeros(q.size());
    gpu_->Attention(**gc, 0, dq, bg, c.nq, scale, out);
    // A bf16 cache holds the rotated k rounded (the reference's float32 cache does not): bf16 tolerance.
    const bool bf16 = dtype == DType::kBF16;
    ExpectClose(Host(out, q.size()), want, bf16 ? 1e-2 : 2e-5, bf16 ? 1e-2 : 2e-4, "attention over the written cache");
  }
}

// A prefill chunk after a cached prefix (tensor-core path, several 64-query and 64-key tiles) is bitwise
// the same alone or beside a longer chunk (more query tiles in the grid), a fresh prefill and decodes.
TEST_F(CudaAttentionTest, PrefillChunkIsBatchInvariant) {
  const AttentionCase alone{40, 8, 128, 16, {{100, 75}}};
  const AttentionCase mixed{40, 8, 128, 16, {{100, 75}, {0, 200}, {2500, 1}, {30, 9}}};
  std::vector<float> a, b, want;
  Run(alone, 500, &a, &want);  // same seed: the first sequence's data is the same prefix of each stream
  ExpectAttentionClose(alone, a, want, "prefill alone");
  Run(mixed, 500, &b, &want);
  ExpectAttentionClose(mixed, b, want, "prefill mixed");
  const size_t rows = 75 * 40 * 128;
  ASSERT_GE(b.size(), rows);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), rows * sizeof(float)));
}

}  // namespace
}  // namespace tpserve::kernels
