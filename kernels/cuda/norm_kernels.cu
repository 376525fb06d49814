// RMSNorm and fused residual-add + RMSNorm: one block per row, 16-byte loads and stores when the row
// length allows, fixed-order block reduction, so a row's result never depends on how many rows are in
// the call.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Elements [4c, 4c + 4) of a row: one 16-byte load / store when kVec4 (cols % 4 == 0, so every row
// starts 16-byte aligned), else element c alone.
template <bool kVec4>
struct Row {
  static constexpr int kWidth = kVec4 ? 4 : 1;
  __device__ __forceinline__ static float4 Load(const float* r, int64_t c) {
    if constexpr (kVec4) return reinterpret_cast<const float4*>(r)[c];
    return float4{r[c], 0.0f, 0.0f, 0.0f};
  }
  __device__ __forceinline__ static void Store(float* r, int64_t c, float4 v) {
    if constexpr (kVec4) {
      reinterpret_cast<float4*>(r)[c] = v;
    } else {
      r[c] = v.x;
    }
  }
};

__device__ __forceinline__ float SumSq(float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }

// v * inv * w[4c .. 4c + kWidth).
template <bool kVec4>
__device__ __forceinline__ float4 Scale(float4 v, float inv, const void* __restrict__ w, int w_dtype, int64_t c) {
  const int64_t e = c * Row<kVec4>::kWidth;
  v.x = v.x * inv * LoadWeight(w, w_dtype, e);
  if constexpr (kVec4) {
    v.y = v.y * inv * LoadWeight(w, w_dtype, e + 1);
    v.z = v.z * inv * LoadWeight(w, w_dtype, e + 2);
    v.w = v.w * inv * LoadWeight(w, w_dtype, e + 3);
  }
  return v;
}

// x, out: [rows, cols] (may alias: each thread reads x[c] before writing out[c] for its own c, so they
// are not __restrict__). One block per row; the reduction order depends only on cols.
template <bool kVec4>
__global__ void RmsNormKernel(const float* x, int64_t cols, const void* __restrict__ w, int w_dtype, float eps,
                              float* out) {
  __shared__ float red[32];
  using R = Row<kVec4>;
  const int64_t n = cols / R::kWidth;
  const float* xr = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) ss += SumSq(R::Load(xr, c));
  ss = BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) R::Store(o, c, Scale<kVec4>(R::Load(xr, c), inv, w, w_dtype, c));
}

// residual += x; out = RmsNorm(residual). Each thread re-reads only the residual elements it wrote.
template <bool kVec4>
__global__ void AddRmsNormKernel(float* residual, const float* x, int64_t cols, const void* __restrict__ w,
                                 int w_dtype, float eps, float* out) {
  __shared__ float red[32];
  using R = Row<kVec4>;
  const int64_t n = cols / R::kWidth;
  float* rr = residual + blockIdx.x * cols;
  const float* xr = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    float4 v = R::Load(rr, c);
    const float4 a = R::Load(xr, c);
    v.x += a.x, v.y += a.y, v.z += a.z, v.w += a.w;
    R::Store(rr, c, v);
    ss += SumSq(v);
  }
  ss = BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) R::Store(o, c, Scale<kVec4>(R::Load(rr, c), inv, w, w_dtype, c));
}

}  // namespace

void LaunchRmsNorm(const float* x, int64_t rows, int64_t cols, const void* w, int w_dtype, float eps,
                   float* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned int grid = static_cast<unsigned int>(rows);
  if (cols % 4 == 0) {
    RmsNormKernel<true><<<grid, kThreads, 0, stream>>>(x, cols, w, w_dtype, eps, out);
  } else {
    RmsNormKernel<false><<<grid, kThreads, 0, stream>>>(x, cols, w, w_dtype, eps, out);
  }
  TP_CUDA_CHECK_LAUNCH("RmsNorm");
}

void LaunchAddRmsNorm(float* residual, const float* x, int64_t rows, int64_t cols, const void* w,
                      int w_dtype, float eps, float* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned int grid = static_cast<unsigned int>(rows);
  if (cols % 4 == 0) {
    AddRmsNormKernel<true><<<grid, kThreads, 0, stream>>>(residual, x, cols, w, w_dtype, eps, out);
  } else {
    AddRmsNormKernel<false><<<grid, kThreads, 0, stream>>>(residual, x, cols, w, w_dtype, eps, out);
  }
  TP_CUDA_CHECK_LAUNCH("AddRmsNorm");
}

}  // namespace tpserve::kernels::cuda
