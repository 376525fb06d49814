// W8 GEMV for decode with --quantization int8: y[m, n] = scales[n] * (x[m, k] · q[n, k]ᵀ), q int8 with one
// float32 scale per row (worker/model/quantization.h), x float32, m <= kGemvMaxRows. As gemv_kernels.cu:
// each warp owns two weight rows and streams them with 16-byte loads (16 int8 weights each) that bypass
// L1, dequantizes them in registers (int8 -> float, exact) and accumulates in fp32; each output element's
// summation order depends only on k, never on m (batch invariance). The scale multiplies the warp's sum.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxM = static_cast<int>(kGemvMaxRows);

// Four int8 packed in a word (lowest byte first in memory) -> four floats.
__device__ __forceinline__ void Unpack4(uint32_t v, float* f) {
  f[0] = static_cast<float>(static_cast<int8_t>(v & 0xffu));
  f[1] = static_cast<float>(static_cast<int8_t>((v >> 8) & 0xffu));
  f[2] = static_cast<float>(static_cast<int8_t>((v >> 16) & 0xffu));
  f[3] = static_cast<float>(static_cast<int8_t>(v >> 24));
}

__device__ __forceinline__ void Unpack16(const int4& v, float (&f)[16]) {
  Unpack4(static_cast<uint32_t>(v.x), f);
  Unpack4(static_cast<uint32_t>(v.y), f + 4);
  Unpack4(static_cast<uint32_t>(v.z), f + 8);
  Unpack4(static_cast<uint32_t>(v.w), f + 12);
}

// acc += dot(w[0..16), x[16c .. 16c + 16)) in a fixed order.
__device__ __forceinline__ float Dot16(const float (&w)[16], const float* x, int64_t c, float acc) {
  const float4* xp = reinterpret_cast<const float4*>(x) + 4 * c;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float4 v = __ldg(xp + q);
    acc = fmaf(w[4 * q + 0], v.x, acc);
    acc = fmaf(w[4 * q + 1], v.y, acc);
    acc = fmaf(w[4 * q + 2], v.z, acc);
    acc = fmaf(w[4 * q + 3], v.w, acc);
  }
  return acc;
}

// grid: ceil(n / kRowsPerBlock); block: kWarps * 32. `vec`: k % 16 == 0 and w, x 16-byte aligned.
__global__ void __launch_bounds__(kWarps * 32) GemvInt8Kernel(const float* __restrict__ x, int m,
                                                              const int8_t* __restrict__ w,
                                                              const float* __restrict__ scales, int64_t n,
                                                              int64_t k, float* __restrict__ y, bool vec) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  if (row0 >= n) return;
  const bool has_row1 = row0 + 1 < n;
  const int64_t row1 = has_row1 ? row0 + 1 : row0;  // a missing second row re-reads row 0, never written

  float acc[kRowsPerWarp][kMaxM];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kMaxM; ++r) acc[j][r] = 0.0f;
  }

  if (vec) {
    const int64_t chunks = k / 16;
    const int4* wa = reinterpret_cast<const int4*>(w + row0 * k);
    const int4* wb = reinterpret_cast<const int4*>(w + row1 * k);
    for (int64_t c = lane; c < chunks; c += 32) {
      float fa[16], fb[16];
      Unpack16(LoadStreaming(wa + c), fa);
      Unpack16(LoadStreaming(wb + c), fb);
#pragma unroll
      for (int r = 0; r < kMaxM; ++r) {
        if (r < m) {
          acc[0][r] = Dot16(fa, x + r * k, c, acc[0][r]);
          acc[1][r] = Dot16(fb, x + r * k, c, acc[1][r]);
        }
      }
    }
  } else {
    for (int64_t c = lane; c < k; c += 32) {
      const float wa = static_cast<float>(w[row0 * k + c]);
      const float wb = static_cast<float>(w[row1 * k + c]);
#pragma unroll
      for (int r = 0; r < kMaxM; ++r) {
        if (r < m) {
          const float xv = x[r * k + c];
          acc[0][r] = fmaf(wa, xv, acc[0][r]);
          acc[1][r] = fmaf(wb, xv, acc[1][r]);
        }
      }
    }
  }

  const float s0 = scales[row0], s1 = scales[row1];
#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
    if (r < m) {
      const float a0 = WarpSum(acc[0][r]);
      const float a1 = WarpSum(acc[1][r]);
      if (lane == 0) {
        y[r * n + row0] = a0 * s0;
        if (has_row1) y[r * n + row0 + 1] = a1 * s1;
      }
    }
  }
}

bool Aligned16Bytes(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void LaunchGemvInt8(const float* x, int64_t m, const int8_t* w, const float* scales, int64_t n, int64_t k,
                    float* y, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  TP_CHECK(m <= kGemvMaxRows) << "GEMV takes at most " << kGemvMaxRows << " rows, got " << m;
  const bool vec = k % 16 == 0 && Aligned16Bytes(w) && Aligned16Bytes(x);
  const unsigned int grid = CeilDivU(n, kRowsPerBlock);
  GemvInt8Kernel<<<grid, kWarps * 32, 0, stream>>>(x, static_cast<int>(m), w, scales, n, k, y, vec);
  TP_CUDA_CHECK_LAUNCH("GemvInt8");
}

}  // namespace tpserve::kernels::cuda
