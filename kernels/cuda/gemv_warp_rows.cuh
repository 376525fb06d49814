// The warp skeleton both decode GEMVs share (gemv_kernels.cu for 16-bit weights, gemv_int8_kernels.cu for
// int8): y[m, n] = Finish(x[m, k] · w[n, k]ᵀ) for m <= kGemvMaxRows. Each warp owns two weight rows and
// streams them with 16-byte loads that bypass L1 (weights are read once per step; x stays L1/L2-resident and
// is shared by all warps), two chunks per lane in flight; fp32 accumulation. Each output element's summation
// order depends only on k, never on m, so a row's result is batch-invariant.
//
// A Loader says how a weight's bytes become floats:
//   using Elem = ...;                          // stored element (uint16_t bits, int8_t)
//   static constexpr int kPerChunk;            // elements per 16-byte load (8 or 16)
//   static void Unpack(const int4&, float (&)[kPerChunk]);
//   static float Scalar(const Elem* w, int64_t i);   // the unaligned / odd-k path
//   float Finish(float sum, int64_t row) const;      // e.g. the int8 row scale
#pragma once

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda::gemv {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxM = static_cast<int>(kGemvMaxRows);

// acc[j][r] += dot(w_j[chunk c], x[r, chunk c]) for both rows j and all r < m, each in element order.
template <class Loader>
__device__ __forceinline__ void AccumulateChunk(const int4& wa, const int4& wb, const float* x, int m, int64_t k,
                                                int64_t c, float (&acc)[kRowsPerWarp][kMaxM]) {
  constexpr int kN = Loader::kPerChunk;
  float fa[kN], fb[kN];
  Loader::Unpack(wa, fa);
  Loader::Unpack(wb, fb);
#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
    if (r < m) {
      const float4* xp = reinterpret_cast<const float4*>(x + r * k) + (kN / 4) * c;
#pragma unroll
      for (int q = 0; q < kN / 4; ++q) {
        const float4 v = __ldg(xp + q);
        acc[0][r] = fmaf(fa[4 * q + 0], v.x, acc[0][r]);
        acc[0][r] = fmaf(fa[4 * q + 1], v.y, acc[0][r]);
        acc[0][r] = fmaf(fa[4 * q + 2], v.z, acc[0][r]);
        acc[0][r] = fmaf(fa[4 * q + 3], v.w, acc[0][r]);
        acc[1][r] = fmaf(fb[4 * q + 0], v.x, acc[1][r]);
        acc[1][r] = fmaf(fb[4 * q + 1], v.y, acc[1][r]);
        acc[1][r] = fmaf(fb[4 * q + 2], v.z, acc[1][r]);
        acc[1][r] = fmaf(fb[4 * q + 3], v.w, acc[1][r]);
      }
    }
  }
}

// grid: ceil(n / kRowsPerBlock); block: kWarps * 32. `vec`: k % kPerChunk == 0 and w, x 16-byte aligned.
template <class Loader>
__global__ void __launch_bounds__(kWarps * 32) WarpRowsKernel(const float* __restrict__ x, int m,
                                                               const typename Loader::Elem* __restrict__ w,
                                                               Loader loader, int64_t n, int64_t k,
                                                               float* __restrict__ y, bool vec) {
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
    const int64_t chunks = k / Loader::kPerChunk;
    const int4* wa = reinterpret_cast<const int4*>(w + row0 * k);
    const int4* wb = reinterpret_cast<const int4*>(w + row1 * k);
    // Two chunks per lane per iteration (c, c + 32: the same order as one at a time): four 16-byte weight
    // loads in flight before any math.
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
      AccumulateChunk<Loader>(a0, b0, x, m, k, c, acc);
      if (has2) AccumulateChunk<Loader>(a1, b1, x, m, k, c2, acc);
    }
  } else {
    for (int64_t c = lane; c < k; c += 32) {
      const float wa = Loader::Scalar(w, row0 * k + c);
      const float wb = Loader::Scalar(w, row1 * k + c);
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
        y[r * n + row0] = loader.Finish(s0, row0);
        if (has_row1) y[r * n + row0 + 1] = loader.Finish(s1, row1);
      }
    }
  }
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Validates m and launches WarpRowsKernel<Loader>.
template <class Loader>
void Launch(const float* x, int64_t m, const typename Loader::Elem* w, Loader loader, int64_t n, int64_t k,
            float* y, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  TP_CHECK(m <= kGemvMaxRows) << "GEMV takes at most " << kGemvMaxRows << " rows, got " << m;
  const bool vec = k % Loader::kPerChunk == 0 && Aligned16(w) && Aligned16(x);
  const unsigned int grid = CeilDivU(n, kRowsPerBlock);
  WarpRowsKernel<Loader><<<grid, kWarps * 32, 0, stream>>>(x, static_cast<int>(m), w, loader, n, k, y, vec);
  TP_CUDA_CHECK_LAUNCH("Gemv");
}

}  // namespace tpserve::kernels::cuda::gemv
