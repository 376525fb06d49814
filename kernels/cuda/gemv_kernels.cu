// Memory-bound GEMV for decode: y[m, n] = x[m, k] · w[n, k]ᵀ with 16-bit weights, m <= 8.
// Each warp owns two weight rows and streams them with 16-byte loads that bypass L1 (weights are read
// once per step; x stays L1/L2-resident and is shared by all warps). fp32 accumulation; each output
// element's summation order depends only on k, never on m, so a row's result is batch-invariant.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxM = static_cast<int>(kGemvMaxRows);

// Two packed 16-bit values (low half first in memory) -> two floats.
template <int kDtype>
__device__ __forceinline__ void Unpack2(uint32_t word, float& lo, float& hi) {
  if constexpr (kDtype == kDevBF16) {
    lo = __uint_as_float(word << 16);
    hi = __uint_as_float(word & 0xffff0000u);
  } else {
    lo = F16BitsToFloat(static_cast<uint16_t>(word & 0xffffu));
    hi = F16BitsToFloat(static_cast<uint16_t>(word >> 16));
  }
}

template <int kDtype>
__device__ __forceinline__ void Unpack8(const int4& v, float (&f)[8]) {
  Unpack2<kDtype>(static_cast<uint32_t>(v.x), f[0], f[1]);
  Unpack2<kDtype>(static_cast<uint32_t>(v.y), f[2], f[3]);
  Unpack2<kDtype>(static_cast<uint32_t>(v.z), f[4], f[5]);
  Unpack2<kDtype>(static_cast<uint32_t>(v.w), f[6], f[7]);
}

// acc += dot(w[0..8), x[0..8)) in a fixed order.
__device__ __forceinline__ float Dot8(const float (&w)[8], const float4& a, const float4& b, float acc) {
  acc = fmaf(w[0], a.x, acc);
  acc = fmaf(w[1], a.y, acc);
  acc = fmaf(w[2], a.z, acc);
  acc = fmaf(w[3], a.w, acc);
  acc = fmaf(w[4], b.x, acc);
  acc = fmaf(w[5], b.y, acc);
  acc = fmaf(w[6], b.z, acc);
  acc = fmaf(w[7], b.w, acc);
  return acc;
}

// Accumulates one 8-element chunk (chunk index c, i.e. columns [8c, 8c+8)) of both rows for all m.
template <int kDtype>
__device__ __forceinline__ void AccumulateChunk(const int4& wa, const int4& wb, const float* x, int m, int64_t k,
                                                int64_t c, float (&acc)[kRowsPerWarp][kMaxM]) {
  float fa[8], fb[8];
  Unpack8<kDtype>(wa, fa);
  Unpack8<kDtype>(wb, fb);
#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
    if (r < m) {
      const float4* xp = reinterpret_cast<const float4*>(x + r * k) + 2 * c;
      const float4 x0 = __ldg(xp);
      const float4 x1 = __ldg(xp + 1);
      acc[0][r] = Dot8(fa, x0, x1, acc[0][r]);
      acc[1][r] = Dot8(fb, x0, x1, acc[1][r]);
    }
  }
}

// grid: ceil(n / kRowsPerBlock); block: kWarps * 32. `vec`: k % 8 == 0 and w, x 16-byte aligned.
template <int kDtype>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const float* __restrict__ x, int m,
                                                          const uint16_t* __restrict__ w, int64_t n, int64_t k,
                                                          float* __restrict__ y, bool vec) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  if (row0 >= n) return;
  const bool has_row1 = row0 + 1 < n;
  // A missing second row re-reads row 0 (always in bounds) and is never written.
  const int64_t row1 = has_row1 ? row0 + 1 : row0;

  float acc[kRowsPerWarp][kMaxM];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kMaxM; ++r) acc[j][r] = 0.0f;
  }

  if (vec) {
    const int64_t chunks = k / 8;
    const int4* wa = reinterpret_cast<const int4*>(w + row0 * k);
    const int4* wb = reinterpret_cast<const int4*>(w + row1 * k);
    // Two chunks per lane per iteration: four 16-byte weight loads in flight before any math.
    for (int64_t c = lane; c < chunks; c += 64) {
      const int64_t c2 = c + 32;
      const bool has2 = c2 < chunks;
      const int4 a0 = LoadStreaming(wa + c);
      const int4 b0 = LoadStreaming(wb + c);
      int4 a1 = make_int4(0, 0, 0, 0), b1 = make_int4(0, 0, 0, 0);
      if (has2) {
        a1 = LoadStreaming(wa + c2);
        b1 = LoadStreaming(wb + c2);
      }
      AccumulateChunk<kDtype>(a0, b0, x, m, k, c, acc);
      if (has2) AccumulateChunk<kDtype>(a1, b1, x, m, k, c2, acc);
    }
  } else {
    for (int64_t c = lane; c < k; c += 32) {
      float wa, wb;
      if constexpr (kDtype == kDevBF16) {
        wa = Bf16BitsToFloat(w[row0 * k + c]);
        wb = Bf16BitsToFloat(w[row1 * k + c]);
      } else {
        wa = F16BitsToFloat(w[row0 * k + c]);
        wb = F16BitsToFloat(w[row1 * k + c]);
      }
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

#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
    if (r < m) {
      const float s0 = WarpSum(acc[0][r]);
      const float s1 = WarpSum(acc[1][r]);
      if (lane == 0) {
        y[r * n + row0] = s0;
        if (has_row1) y[r * n + row0 + 1] = s1;
      }
    }
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void LaunchGemv16(const float* x, int64_t m, const void* w, int dtype, int64_t n, int64_t k, float* y,
                  cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  TP_CHECK(m <= kGemvMaxRows) << "GEMV takes at most " << kGemvMaxRows << " rows, got " << m;
  const bool vec = k % 8 == 0 && Aligned16(w) && Aligned16(x);
  const unsigned int grid = CeilDivU(n, kRowsPerBlock);
  const auto* wp = static_cast<const uint16_t*>(w);
  if (dtype == kDevBF16) {
    GemvKernel<kDevBF16><<<grid, kWarps * 32, 0, stream>>>(x, static_cast<int>(m), wp, n, k, y, vec);
  } else {
    TP_CHECK(dtype == kDevF16) << "GEMV weight dtype " << dtype;
    GemvKernel<kDevF16><<<grid, kWarps * 32, 0, stream>>>(x, static_cast<int>(m), wp, n, k, y, vec);
  }
  TP_CUDA_CHECK_LAUNCH("Gemv16");
}

}  // namespace tpserve::kernels::cuda
