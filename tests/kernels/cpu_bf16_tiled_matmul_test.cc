// The register-tiled vdpbf16ps matmul (kernels/cpu/matmul_avx512_bf16.cc) against the untiled
// vdpbf16ps kernel it replaced, bit for bit: same accumulator per element, same k order, same reduction
// tree. Covers k blocking (k > 2048), k tails (k % 32 != 0), partial strips (m % 4 != 0) and partial
// tiles (rows % 6 != 0), and every row split a thread could be handed. Skips without avx512_bf16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "tests/util/random.h"

namespace tpserve::kernels::cpu {
namespace {

std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed) {
  testing::SplitMix64 rng(seed);
  std::vector<uint16_t> v(n);
  for (auto& e : v) {
    const uint64_t z = rng.Next();
    // Mixed signs and magnitudes 2^-6 .. 2^1, so rounding order shows in the low bits.
    const float f = (static_cast<float>(z >> 40) / 16777216.0f - 0.5f) * std::ldexp(1.0f, int(z & 7) - 5);
    e = F32ToBF16(f);
  }
  return v;
}

bool HasBf16Dot() {
  const CpuIsa isa = DetectCpuIsa();
  if (isa != CpuIsa::kAvx512 && isa != CpuIsa::kAmx) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

TEST(CpuBf16TiledMatmul, BitwiseEqualToUntiledKernel) {
  if (!HasBf16Dot()) GTEST_SKIP() << "needs AVX-512 with avx512_bf16";
  const CpuKernels& kern = Avx512Kernels(/*with_bf16=*/true);
  ASSERT_TRUE(kern.pack_x(DType::kBF16, 64));
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 13, 2048}, {16, 97, 2048}, {7, 25, 5504}, {33, 31, 4099},
                          {5, 12, 31},   {4, 6, 1},      {19, 50, 2080}, {64, 40, 1000}};
  for (const Shape& s : shapes) {
    SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
    const std::vector<uint16_t> w = RandomBf16(s.n * s.k, uint32_t(s.n + s.k));
    const std::vector<uint16_t> xb = RandomBf16(s.m * s.k, uint32_t(s.m * 3 + s.k));
    const int64_t blocks = (s.m + 15) / 16, block_elems = 16 * PackXCols(s.k);
    std::vector<uint16_t> xp(blocks * block_elems + 32);
    // 64-byte aligned, as the backend hands it over.
    uint16_t* xpa = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(xp.data()) + 63) / 64 * 64);
    for (int64_t b = 0; b < blocks; ++b) kern.pack_x_block(xb.data(), s.m, s.k, b, xpa);

    MatmulJob job;
    job.xb = xb.data();
    job.m = s.m;
    job.k = s.k;
    job.w = w.data();
    job.wdt = DType::kBF16;
    job.n = s.n;
    std::vector<float> want(s.m * s.n, NAN), got(s.m * s.n, NAN);
    job.y = want.data();
    kern.matmul(job, 0, s.n);  // no xp: the untiled kernel
    job.xp = xpa;
    // Row ranges as the thread pool hands them out: all at once, and in uneven pieces.
    for (int64_t piece : {s.n, int64_t{16}, int64_t{7}}) {
      std::fill(got.begin(), got.end(), NAN);
      job.y = got.data();
      for (int64_t n0 = 0; n0 < s.n; n0 += piece) kern.matmul(job, n0, std::min(s.n, n0 + piece));
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
            << "piece " << piece << " token " << i / s.n << " row " << i % s.n << ": " << got[i] << " vs " << want[i];
      }
    }
  }
}

}  // namespace
}  // namespace tpserve::kernels::cpu
