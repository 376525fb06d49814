// RMSNorm and fused residual-add + RMSNorm: one block per row, fixed-order block reduction, so a
// row's result never depends on how many rows are in the call.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// x, out: [rows, cols] (may alias: each thread reads x[c] before writing out[c] for its own c).
__global__ void RmsNormKernel(const float* x, int64_t cols, const void* w, int w_dtype, float eps, float* out) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
  ss = BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = xr[c] * inv * LoadWeight(w, w_dtype, c);
}

// residual += x; out = RmsNorm(residual). Each thread re-reads only the residual elements it wrote.
__global__ void AddRmsNormKernel(float* residual, const float* x, int64_t cols, const void* w, int w_dtype,
                                 float eps, float* out) {
  __shared__ float red[32];
  float* rr = residual + blockIdx.x * cols;
  const float* xr = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = rr[c] + xr[c];
    rr[c] = v;
    ss += v * v;
  }
  ss = BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = rr[c] * inv * LoadWeight(w, w_dtype, c);
}

}  // namespace

void LaunchRmsNorm(const float* x, int64_t rows, int64_t cols, const void* w, int w_dtype, float eps,
                   float* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  RmsNormKernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(x, cols, w, w_dtype, eps, out);
  TP_CUDA_CHECK_LAUNCH("RmsNorm");
}

void LaunchAddRmsNorm(float* residual, const float* x, int64_t rows, int64_t cols, const void* w,
                      int w_dtype, float eps, float* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  AddRmsNormKernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(residual, x, cols, w, w_dtype,
                                                                             eps, out);
  TP_CUDA_CHECK_LAUNCH("AddRmsNorm");
}

}  // namespace tpserve::kernels::cuda
