// The avx512-bf16 backend's pair-panel weight layout (kernels/cpu/bf16_pair_panels.h) and the matmul over
// it (matmul_avx512_bf16_pairs.cc): the repack is a permutation of the same bytes (k tails, odd n), the
// results match the plain reference, every token of m = 1 .. 33 gets the bits it gets alone (batch
// invariance), thread count does not matter, and tensor-parallel slices repacked on their own agree with
// the whole weight. Layout tests run everywhere; matmul tests skip where the backend keeps row-major.
// The matmul tests run for bf16 weights and for int8 weights (--quantization int8) in the same layout, and
// in the sign-magnitude blocks of CPUs with AVX512-VBMI (kInt8PairBlocks), which must give the same bits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/bf16_pair_panels.h"
#include "tests/util/random.h"

namespace tpserve::kernels {
namespace {

std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed) {
  std::vector<float> f = testing::RandomFloats(n, seed);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = F32ToBF16(f[i]);
  return v;
}

// Repacks w [n, k] with `repack`, checks every element against an independent statement of the layout
// (bf16_pair_panels.h; the same for bf16 and int8 elements), and that `unpack` restores it.
template <class E>
void CheckRepack(const std::vector<E>& w, int64_t n, int64_t k, void (*repack)(E*, int64_t, int64_t, int64_t, int64_t, E*),
                 void (*unpack)(E*, int64_t, int64_t, int64_t, int64_t, E*)) {
  std::vector<E> p = w, scratch(cpu::kPairPanelCols * k);
  const int64_t panels = (n + 15) / 16;
  repack(p.data(), n, k, 0, panels, scratch.data());
  for (int64_t o = 0; o < n; ++o) {
    const int64_t c0 = o / 16 * 16, j = o - c0, r = std::min<int64_t>(16, n - c0);
    for (int64_t e = 0; e < k; ++e) {
      const int64_t at = e < k / 2 * 2 ? c0 * k + (e / 2) * 2 * r + 2 * j + e % 2 : c0 * k + (k / 2) * 2 * r + j;
      ASSERT_EQ(p[at], w[o * k + e]) << "column " << o << " k " << e;
    }
  }
  unpack(p.data(), n, k, 0, panels, scratch.data());
  EXPECT_EQ(p, w);
}

TEST(PairPanels, RepackPlacesEveryElementAndRoundTrips) {
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{16, 2}, {37, 1}, {37, 33}, {5, 1029}, {48, 64}}) {
    SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k));
    CheckRepack(RandomBf16(n * k, uint32_t(n * 31 + k)), n, k, &cpu::RepackBf16PairPanels, &cpu::UnpackBf16PairPanels);
    std::vector<int8_t> q(n * k);
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<int8_t>(static_cast<int>((i * 2654435761u) % 255) - 127);
    CheckRepack(q, n, k, &cpu::RepackInt8PairPanels, &cpu::UnpackInt8PairPanels);
  }
}

// kInt8PairBlocks (bf16_pair_panels.h): every element where the layout says and sign-magnitude inside the
// blocks of full panels, plain int8 panel bytes elsewhere (lone pair, odd-k tail, narrow panel); round trip.
TEST(PairPanels, Int8PairBlocksPlaceAndEncodeEveryElementAndRoundTrip) {
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{16, 4}, {37, 1}, {37, 33}, {21, 6}, {5, 1029}, {48, 64}}) {
    SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k));
    std::vector<int8_t> w(n * k);
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<int8_t>(static_cast<int>((i * 2654435761u) % 255) - 127);
    ASSERT_TRUE(cpu::Int8FitsPairBlocks(w.data(), n * k));
    std::vector<int8_t> p = w, scratch(cpu::kPairPanelCols * k);
    const int64_t panels = (n + 15) / 16, blocks = (k / 2) / 2;
    cpu::RepackInt8PairBlocks(p.data(), n, k, 0, panels, scratch.data());
    for (int64_t o = 0; o < n; ++o) {
      const int64_t c0 = o / 16 * 16, j = o - c0, r = std::min<int64_t>(16, n - c0);
      for (int64_t e = 0; e < k; ++e) {
        const int64_t q = e / 2, byte = 2 * j + e % 2;  // pair, and byte within the pair's 2r
        const int v = w[o * k + e];
        if (r == 16 && e < k / 2 * 2 && q < 2 * blocks) {
          const int64_t at = c0 * k + 64 * (q / 2) + (byte / 8) * 16 + 8 * (q % 2) + byte % 8;
          const int sm = v < 0 ? 0x80 + -v : v;
          ASSERT_EQ(static_cast<uint8_t>(p[at]), sm) << "column " << o << " k " << e;
        } else {
          const int64_t at = e < k / 2 * 2 ? c0 * k + q * 2 * r + byte : c0 * k + (k / 2) * 2 * r + j;
          ASSERT_EQ(p[at], v) << "column " << o << " k " << e;
        }
      }
    }
    cpu::UnpackInt8PairBlocks(p.data(), n, k, 0, panels, scratch.data());
    EXPECT_EQ(p, w);
  }
  const int8_t with_min[3] = {1, -128, 127};
  EXPECT_FALSE(cpu::Int8FitsPairBlocks(with_min, 3));
}

// A row-major weight of the parameter dtype: bf16, or int8 with per-row scales (--quantization int8).
struct TestWeight {
  DType dt = DType::kBF16;
  int64_t n = 0, k = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // kI8 only
  size_t esize() const { return dt == DType::kI8 ? 1 : 2; }
  WeightView view() const {
    WeightView v{bytes.data(), dt, n, k};
    if (dt == DType::kI8) v.scales = scales.data();
    return v;
  }
  // Output columns (rows of W) [a, b): a column-split rank's part.
  TestWeight Rows(int64_t a, int64_t b) const {
    TestWeight t{dt, b - a, k, {bytes.begin() + a * k * esize(), bytes.begin() + b * k * esize()}, {}};
    if (dt == DType::kI8) t.scales.assign(scales.begin() + a, scales.begin() + b);
    return t;
  }
  // Input features [c0, c1) of every row, whole-row scales kept: a row-split rank's part.
  TestWeight Cols(int64_t c0, int64_t c1) const {
    TestWeight t{dt, n, c1 - c0, std::vector<uint8_t>(n * (c1 - c0) * esize()), scales};
    for (int64_t o = 0; o < n; ++o) {
      std::copy(bytes.begin() + (o * k + c0) * esize(), bytes.begin() + (o * k + c1) * esize(),
                t.bytes.begin() + o * (c1 - c0) * esize());
    }
    return t;
  }
};

TestWeight RandomWeight(DType dt, int64_t n, int64_t k, uint32_t seed) {
  TestWeight t{dt, n, k, {}, {}};
  if (dt == DType::kBF16) {
    const std::vector<uint16_t> w = RandomBf16(n * k, seed);
    t.bytes.resize(w.size() * 2);
    std::memcpy(t.bytes.data(), w.data(), t.bytes.size());
    return t;
  }
  const std::vector<float> f = testing::RandomFloats(n * k, seed);
  t.bytes.resize(n * k);
  for (size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(f[i] * 127)));
  t.scales = testing::RandomFloats(n, seed + 1, 0.5f / 127, 1.5f / 127);
  return t;
}

// The matmul over pair panels, for bf16 and for int8 weights (widened in registers up to 16 tokens, from a
// per-tile scratch beyond: both must give the same bits).
// The weights' dtype and, for int8, whether the backend may use AVX512-VBMI (kInt8PairBlocks where the CPU
// has it; false: the plain int8 panels of CPUs without it).
struct Variant {
  DType dt;
  bool vbmi;
};

bool CpuHasVbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
}

class PairPanelMatmulTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    CpuBackendOptions options{2, CpuIsa::kAvx512};
    options.int8_vbmi = GetParam().vbmi;
    auto be = CreateCpuBackend(options);
    if (!be.ok()) GTEST_SKIP() << "needs AVX-512: " << be.status();
    cpu_ = std::move(*be);
    options.threads = 1;
    auto one = CreateCpuBackend(options);
    ASSERT_TRUE(one.ok());
    one_thread_ = std::move(*one);
    ref_ = CreateReferenceBackend();
    TestWeight probe = RandomWeight(dt(), 16, 2, 1);
    WeightView v = probe.view();
    if (!cpu_->PackMatmulWeight(&v)) GTEST_SKIP() << cpu_->name() << " keeps row-major weights";
    if (dt() == DType::kI8 && GetParam().vbmi && !CpuHasVbmi()) GTEST_SKIP() << "needs AVX512-VBMI";
  }

  DType dt() const { return GetParam().dt; }
  WeightLayout ExpectedLayout() const {
    if (dt() != DType::kI8) return WeightLayout::kBf16PairPanels;
    return GetParam().vbmi ? WeightLayout::kInt8PairBlocks : WeightLayout::kInt8PairPanels;
  }

  // The weight's bytes repacked by the backend, kept alive with its view.
  struct Packed {
    TestWeight data;
    WeightView view;
  };
  Packed Pack(const TestWeight& w) {
    Packed p{w, {}};
    p.view = p.data.view();
    EXPECT_TRUE(cpu_->PackMatmulWeight(&p.view));
    EXPECT_EQ(p.view.layout, ExpectedLayout());
    return p;
  }

  std::unique_ptr<Backend> cpu_, one_thread_, ref_;
};

void ExpectBitwise(const float* a, const float* b, int64_t count, const std::string& what) {
  for (int64_t i = 0; i < count; ++i) {
    ASSERT_EQ(std::memcmp(&a[i], &b[i], 4), 0) << what << " at " << i << ": " << a[i] << " vs " << b[i];
  }
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, int64_t k, const std::string& what) {
  // bf16-rounded x: ~2^-9 relative per term; |y| ~ sqrt(k) / 3 (tolerance of cpu_ops_test's bf16 dot path).
  const double abs_tol = 4e-3 * std::sqrt(double(k));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(double(got[i]) - want[i]), abs_tol + 1e-2 * std::fabs(want[i]))
        << what << " [" << i << "]: got " << got[i] << " want " << want[i];
  }
}

// Every m from 1 to 33 (full and partial 16-token groups), odd n (narrow last panel), k with tails: each
// row matches the reference and has exactly the bits it has alone, on 1 or 2 threads.
TEST_P(PairPanelMatmulTest, MatchesReferenceAndIsBatchInvariantForEveryM) {
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{37, 33}, {16, 2048}, {101, 1029}, {7, 1}, {300, 64}}) {
    SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k));
    const TestWeight w = RandomWeight(dt(), n, k, uint32_t(n + 7 * k));
    const Packed p = Pack(w);
    const WeightView plain = w.view();
    const int64_t max_m = 33;
    const std::vector<float> x = testing::RandomFloats(max_m * k, uint32_t(k + 1));
    std::vector<float> want(max_m * n);
    ref_->Matmul(x.data(), max_m, plain, want.data());
    // Each token alone (decode), the reference for every batch below.
    std::vector<float> alone(max_m * n, NAN);
    for (int64_t t = 0; t < max_m; ++t) cpu_->Matmul(x.data() + t * k, 1, p.view, alone.data() + t * n);
    ExpectClose(alone, want, k, "tokens alone vs reference");
    for (int64_t m = 1; m <= max_m; ++m) {
      for (Backend* be : {cpu_.get(), one_thread_.get()}) {
        std::vector<float> y(m * n, NAN);
        be->Matmul(x.data(), m, p.view, y.data());
        ExpectBitwise(y.data(), alone.data(), m * n,
                      "m=" + std::to_string(m) + " threads " + (be == cpu_.get() ? "2" : "1") + " vs alone");
      }
    }
  }
}

// A token's bits do not depend on its neighbours' values or its place in the batch.
TEST_P(PairPanelMatmulTest, TokenBitsDoNotDependOnItsNeighbours) {
  const int64_t n = 77, k = 515;
  const Packed p = Pack(RandomWeight(dt(), n, k, 5));
  const std::vector<float> x = testing::RandomFloats(k, 6);
  std::vector<float> alone(n);
  cpu_->Matmul(x.data(), 1, p.view, alone.data());
  for (int64_t pos : {0, 15, 16, 20}) {
    std::vector<float> batch = testing::RandomFloats(21 * k, uint32_t(100 + pos), -4.0f, 4.0f);
    std::memcpy(batch.data() + pos * k, x.data(), k * sizeof(float));
    std::vector<float> y(21 * n);
    cpu_->Matmul(batch.data(), 21, p.view, y.data());
    ExpectBitwise(y.data() + pos * n, alone.data(), n, "token at " + std::to_string(pos) + " of 21");
  }
}

// Tensor parallelism: a column split (rows of W) repacked per rank gives exactly the whole weight's columns
// (each element keeps its order, wherever the panel boundaries fall); a row split (k halves) sums to the
// whole within tolerance.
TEST_P(PairPanelMatmulTest, TensorParallelSlicesAgreeWithTheWholeWeight) {
  const int64_t n = 100, k = 2051, m = 19;
  const TestWeight w = RandomWeight(dt(), n, k, 11);
  const Packed whole = Pack(w);
  const std::vector<float> x = testing::RandomFloats(m * k, 12);
  std::vector<float> full(m * n);
  cpu_->Matmul(x.data(), m, whole.view, full.data());
  for (const auto& [a, b] : {std::pair<int64_t, int64_t>{0, 50}, {50, 100}, {7, 61}}) {
    SCOPED_TRACE("columns " + std::to_string(a) + ".." + std::to_string(b));
    const Packed part = Pack(w.Rows(a, b));
    std::vector<float> y(m * (b - a));
    cpu_->Matmul(x.data(), m, part.view, y.data());
    for (int64_t t = 0; t < m; ++t) {
      ExpectBitwise(y.data() + t * (b - a), full.data() + t * n + a, b - a, "token " + std::to_string(t));
    }
  }
  // Row split: ranks hold k columns [0, h) and [h, k) of W and the matching part of x.
  const int64_t h = 1025;
  std::vector<float> sum(m * n, 0.0f);
  for (const auto& [c0, c1] : {std::pair<int64_t, int64_t>{0, h}, {h, k}}) {
    const int64_t kc = c1 - c0;
    std::vector<float> xpart(m * kc);
    for (int64_t t = 0; t < m; ++t) std::copy(x.begin() + t * k + c0, x.begin() + t * k + c1, xpart.begin() + t * kc);
    const Packed part = Pack(w.Cols(c0, c1));
    std::vector<float> y(m * n);
    cpu_->Matmul(xpart.data(), m, part.view, y.data());
    for (size_t i = 0; i < y.size(); ++i) sum[i] += y[i];
  }
  std::vector<float> want(m * n);
  ref_->Matmul(x.data(), m, w.view(), want.data());
  ExpectClose(sum, want, k, "row-split sum vs reference");
}

// The VBMI widening gives the very bits of the plain int8 panels (the same bf16 values in the same order),
// for decode, batched decode and prefill, full and narrow panels, lone pairs and odd k.
TEST_P(PairPanelMatmulTest, Int8PairBlocksGiveThePlainPanelsBits) {
  if (dt() != DType::kI8 || !GetParam().vbmi) GTEST_SKIP() << "compares the two int8 layouts";
  CpuBackendOptions plain_options{2, CpuIsa::kAvx512};
  plain_options.int8_vbmi = false;
  auto plain = CreateCpuBackend(plain_options);
  ASSERT_TRUE(plain.ok());
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{37, 33}, {64, 2048}, {101, 1030}, {48, 6}}) {
    SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k));
    const TestWeight w = RandomWeight(dt(), n, k, uint32_t(3 * n + k));
    const Packed blocks = Pack(w);
    Packed panels{w, {}};
    panels.view = panels.data.view();
    ASSERT_TRUE((*plain)->PackMatmulWeight(&panels.view));
    ASSERT_EQ(panels.view.layout, WeightLayout::kInt8PairPanels);
    for (int64_t m : {1, 3, 16, 17, 40}) {
      const std::vector<float> x = testing::RandomFloats(m * k, uint32_t(m + k));
      std::vector<float> a(m * n, NAN), b(m * n, NAN);
      cpu_->Matmul(x.data(), m, blocks.view, a.data());
      (*plain)->Matmul(x.data(), m, panels.view, b.data());
      ExpectBitwise(a.data(), b.data(), m * n, "m=" + std::to_string(m) + " blocks vs panels");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PairPanelMatmulTest,
                         ::testing::Values(Variant{DType::kBF16, false}, Variant{DType::kI8, true},
                                           Variant{DType::kI8, false}),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           if (info.param.dt != DType::kI8) return std::string("Bf16");
                           return std::string(info.param.vbmi ? "Int8Vbmi" : "Int8");
                         });

}  // namespace
}  // namespace tpserve::kernels
