// Int8 weight-only matmul (kernels/cpu/matmul_int8.h) on every ISA this machine runs (scalar, avx2,
// avx512 -- with avx512_bf16 when present; amx routes to it), through the Backend interface: against the
// float64 reference (given x rounded to bf16 where the kernel rounds it)
// with a tolerance, bitwise batch invariance (a token alone and inside batches of 2..33, any thread
// count), k tails, and tensor-parallel slices (column split: bitwise the same rows; row split: the
// dequantized partials sum to the whole).
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/matmul_int8.h"

namespace tpserve::kernels {
namespace {

uint64_t Next(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::vector<float> RandomX(int64_t n, uint32_t seed) {
  uint64_t s = 0x1234567ull * (seed + 1);
  std::vector<float> v(n);
  // Mixed magnitudes, so summation order shows in the low bits.
  for (auto& e : v) {
    const uint64_t z = Next(&s);
    e = (static_cast<float>(z >> 40) / 16777216.0f - 0.5f) * std::ldexp(1.0f, static_cast<int>(z & 7) - 3);
  }
  return v;
}

// [rows, cols] int8 in [-127, 127] (never all zero) and positive scales around 1/127.
struct Int8Weight {
  int64_t rows, cols;
  std::vector<int8_t> q;
  std::vector<float> scales;
  WeightView view() const {
    WeightView v{q.data(), DType::kI8, rows, cols};
    v.scales = scales.data();
    return v;
  }
};

Int8Weight RandomWeight(int64_t rows, int64_t cols, uint32_t seed) {
  uint64_t s = 0xabcdefull * (seed + 7);
  Int8Weight w{rows, cols, std::vector<int8_t>(rows * cols), std::vector<float>(rows)};
  for (auto& e : w.q) e = static_cast<int8_t>(static_cast<int>(Next(&s) % 255) - 127);
  for (auto& e : w.scales) e = (0.5f + static_cast<float>(Next(&s) >> 40) / 16777216.0f) / 127.0f;
  return w;
}

std::vector<float> MatmulOf(Backend& be, const std::vector<float>& x, int64_t m, const WeightView& w) {
  std::vector<float> y(m * w.rows, NAN);
  be.Matmul(x.data(), m, w, y.data());
  return y;
}

class Int8MatmulTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  // The backend for the parameter ISA, or nullptr (the test skips) when this CPU lacks it.
  std::unique_ptr<Backend> Make(int threads) {
    CpuBackendOptions o;
    o.isa = GetParam();
    o.threads = threads;
    auto be = CreateCpuBackend(o);
    if (!be.ok()) return nullptr;
    return std::move(*be);
  }
};

TEST_P(Int8MatmulTest, MatchesReference) {
  auto be = Make(2);
  if (be == nullptr) GTEST_SKIP() << CpuIsaName(GetParam()) << " not supported here";
  ASSERT_TRUE(be->supports_int8_weights());
  auto ref = CreateReferenceBackend();
  struct Shape {
    int64_t m, n, k;
  };
  // k tails of every width (1, 15, 17, 31, 100, 5125), real sizes (5120 -> 13824 is slow on the
  // reference; 5120 x 200 rows covers the k), rows not a multiple of any tile.
  const Shape shapes[] = {{1, 7, 1},    {3, 13, 15},  {5, 33, 17},  {17, 9, 31},   {1, 97, 100},
                          {33, 21, 64}, {2, 11, 5125}, {1, 200, 5120}, {16, 35, 5120}};
  for (const Shape& s : shapes) {
    SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
    const Int8Weight w = RandomWeight(s.n, s.k, static_cast<uint32_t>(s.n * 31 + s.k));
    const std::vector<float> x = RandomX(s.m * s.k, static_cast<uint32_t>(s.m + s.k));
    const std::vector<float> got = MatmulOf(*be, x, s.m, w.view());
    // The avx512_bf16 kernel multiplies x rounded to bf16 (matmul_int8.h): the reference gets the same x.
    std::vector<float> xr = x;
    if (be->name().find("bf16") != std::string::npos) {
      for (float& v : xr) v = BF16ToF32(F32ToBF16(v));
    }
    const std::vector<float> want = MatmulOf(*ref, xr, s.m, w.view());
    for (int64_t t = 0; t < s.m; ++t) {
      for (int64_t r = 0; r < s.n; ++r) {
        // Float32 accumulation error bound: ~ k * eps * sum |x * w| (loose by design, still ~1e-5 relative).
        double mag = 0.0;
        for (int64_t c = 0; c < s.k; ++c) mag += std::fabs(double(xr[t * s.k + c]) * w.q[r * s.k + c]);
        const double tol = 1e-6 + 4e-6 * std::sqrt(double(s.k)) * mag * w.scales[r];
        const size_t i = t * s.n + r;
        ASSERT_NEAR(got[i], want[i], tol) << "token " << t << " row " << r;
      }
    }
  }
}

TEST_P(Int8MatmulTest, TokenIsBitwiseTheSameAloneAndInAnyBatch) {
  auto be1 = Make(1);
  if (be1 == nullptr) GTEST_SKIP() << CpuIsaName(GetParam()) << " not supported here";
  auto be2 = Make(2);
  for (const int64_t k : {int64_t{70}, int64_t{2056}}) {
    const int64_t n = 45;
    const Int8Weight w = RandomWeight(n, k, static_cast<uint32_t>(k));
    const std::vector<float> x = RandomX(33 * k, 5);
    // Each token alone.
    std::vector<float> alone(33 * n);
    for (int64_t t = 0; t < 33; ++t) {
      const std::vector<float> xt(x.begin() + t * k, x.begin() + (t + 1) * k);
      const std::vector<float> y = MatmulOf(*be1, xt, 1, w.view());
      std::memcpy(&alone[t * n], y.data(), n * sizeof(float));
    }
    for (int64_t m = 2; m <= 33; ++m) {
      for (Backend* be : {be1.get(), be2.get()}) {
        const std::vector<float> xm(x.begin(), x.begin() + m * k);
        const std::vector<float> y = MatmulOf(*be, xm, m, w.view());
        for (int64_t i = 0; i < m * n; ++i) {
          ASSERT_EQ(std::memcmp(&y[i], &alone[i], sizeof(float)), 0)
              << "k " << k << " batch " << m << " token " << i / n << " row " << i % n << ": " << y[i] << " vs "
              << alone[i];
        }
      }
    }
  }
}

TEST_P(Int8MatmulTest, TensorParallelSlices) {
  auto be = Make(2);
  if (be == nullptr) GTEST_SKIP() << CpuIsaName(GetParam()) << " not supported here";
  const int64_t m = 5, n = 40, k = 344;
  const Int8Weight w = RandomWeight(n, k, 99);
  const std::vector<float> x = RandomX(m * k, 3);
  const std::vector<float> whole = MatmulOf(*be, x, m, w.view());

  // Column split (output rows): each rank's rows are bitwise the rows of the whole.
  for (int rank = 0; rank < 2; ++rank) {
    Int8Weight part{n / 2, k, std::vector<int8_t>(w.q.begin() + rank * (n / 2) * k, w.q.begin() + (rank + 1) * (n / 2) * k),
                    std::vector<float>(w.scales.begin() + rank * (n / 2), w.scales.begin() + (rank + 1) * (n / 2))};
    const std::vector<float> y = MatmulOf(*be, x, m, part.view());
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t r = 0; r < n / 2; ++r) {
        ASSERT_EQ(std::memcmp(&y[t * (n / 2) + r], &whole[t * n + rank * (n / 2) + r], 4), 0);
      }
    }
  }
  // Row split (input features) with the whole row's scales on both ranks (the loader's choice): each
  // rank's output is already dequantized, so the all-reduce is a plain float sum.
  std::vector<float> sum(m * n, 0.0f);
  for (int rank = 0; rank < 2; ++rank) {
    const int64_t c0 = rank * (k / 2);
    Int8Weight part{n, k / 2, std::vector<int8_t>(n * (k / 2)), w.scales};
    for (int64_t r = 0; r < n; ++r) std::memcpy(&part.q[r * (k / 2)], &w.q[r * k + c0], k / 2);
    std::vector<float> xs(m * (k / 2));
    for (int64_t t = 0; t < m; ++t) std::memcpy(&xs[t * (k / 2)], &x[t * k + c0], (k / 2) * sizeof(float));
    const std::vector<float> y = MatmulOf(*be, xs, m, part.view());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += y[i];
  }
  for (size_t i = 0; i < sum.size(); ++i) ASSERT_NEAR(sum[i], whole[i], 1e-5 + 1e-5 * std::fabs(whole[i])) << i;
}

// The float32-FMA AVX-512 kernel serves AVX-512 CPUs without avx512_bf16; a CPU with it dispatches the
// vdpbf16ps kernel, so this calls the FMA one directly: against the reference, and bitwise batch invariant.
TEST(Int8MatmulKernels, Avx512FmaKernelWithoutBf16) {
  if (DetectCpuIsa() != CpuIsa::kAvx512 && DetectCpuIsa() != CpuIsa::kAmx) GTEST_SKIP() << "needs AVX-512";
  auto ref = CreateReferenceBackend();
  for (const int64_t k : {int64_t{1}, int64_t{17}, int64_t{100}, int64_t{2056}}) {
    const int64_t n = 37, m = 33;
    const Int8Weight w = RandomWeight(n, k, static_cast<uint32_t>(k + 1));
    const std::vector<float> x = RandomX(m * k, 11);
    const std::vector<float> want = MatmulOf(*ref, x, m, w.view());
    std::vector<float> batch(m * n), alone(m * n);
    cpu::Int8MatmulJob job{x.data(), nullptr, m, k, w.q.data(), w.scales.data(), n, batch.data()};
    cpu::MatmulInt8Avx512(job, 0, n);
    for (int64_t t = 0; t < m; ++t) {
      cpu::Int8MatmulJob one{x.data() + t * k, nullptr, 1, k, w.q.data(), w.scales.data(), n, alone.data() + t * n};
      cpu::MatmulInt8Avx512(one, 0, 20);  // two row ranges, as threads would split them
      cpu::MatmulInt8Avx512(one, 20, n);
    }
    for (int64_t i = 0; i < m * n; ++i) {
      ASSERT_EQ(std::memcmp(&batch[i], &alone[i], 4), 0) << "k " << k << " element " << i;
      ASSERT_NEAR(batch[i], want[i], 1e-4 * (1.0 + std::fabs(want[i]))) << "k " << k << " element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Int8MatmulTest,
                         ::testing::Values(CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAmx),
                         [](const ::testing::TestParamInfo<CpuIsa>& info) { return std::string(CpuIsaName(info.param)); });

}  // namespace
}  // namespace tpserve::kernels
