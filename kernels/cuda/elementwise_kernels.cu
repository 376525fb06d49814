// Small memory-bound CUDA ops: embedding lookup, add, SiLU·mul, row gather, RoPE, f32 -> 16-bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops cap the grid; 4 waves of 132 SMs x 8 blocks is plenty for streaming.
constexpr int64_t kMaxGrid = 4096;

unsigned int StreamGrid(int64_t n) { return static_cast<unsigned int>(std::min<int64_t>(CeilDivU(n, kThreads), kMaxGrid)); }

__global__ void EmbeddingKernel(const int32_t* ids, const void* table, int dtype, int64_t vocab_rows,
                                int64_t dim, int64_t vocab_begin, float* out) {
  const int64_t i = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[i]) - vocab_begin;
  float* o = out + i * dim;
  if (row < 0 || row >= vocab_rows) {
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) o[c] = 0.0f;
    return;
  }
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) o[c] = LoadWeight(table, dtype, row * dim + c);
}

__device__ __forceinline__ float SiluMul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__global__ void SiluMulKernel(const float* __restrict__ gate_up, int64_t rows, int64_t inter,
                              float* __restrict__ out) {
  const int64_t total = rows * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter;
    const int64_t c = i - r * inter;
    out[i] = SiluMul(gate_up[r * 2 * inter + c], gate_up[r * 2 * inter + inter + c]);
  }
}

// inter % 4 == 0: 16-byte loads of gate and up, one 16-byte store; i counts groups of 4 outputs.
__global__ void SiluMulVec4Kernel(const float* __restrict__ gate_up, int64_t rows, int64_t inter,
                                  float* __restrict__ out) {
  const int64_t groups = inter / 4, total = rows * groups;
  const float4* gu = reinterpret_cast<const float4*>(gate_up);
  float4* o = reinterpret_cast<float4*>(out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / groups;
    const int64_t c = i - r * groups;
    const float4 g = gu[r * 2 * groups + c];
    const float4 u = gu[r * 2 * groups + groups + c];
    o[i] = float4{SiluMul(g.x, u.x), SiluMul(g.y, u.y), SiluMul(g.z, u.z), SiluMul(g.w, u.w)};
  }
}

__global__ void GatherRowsKernel(const float* x, const int32_t* rows, int64_t dim, float* out) {
  const int64_t i = blockIdx.x;
  const float* src = x + static_cast<int64_t>(rows[i]) * dim;
  float* dst = out + i * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
}

// One block per token; thread j rotates pair (i, i + half) of one q or k head.
// Angles follow HF Llama in float32: inv_freq = 1 / theta^(2i/d), angle = position * inv_freq.
// inv_freq is computed once per block into shared memory (half <= kMaxHeadDim / 2 values), not per
// element: the same float operations, so the same bits, without a powf per rotated pair.
__global__ void RopeKernel(float* __restrict__ q, float* __restrict__ k, const int32_t* __restrict__ positions,
                           int nq, int nk, int head_dim, float theta) {
  __shared__ float inv_freq_s[kMaxHeadDim / 2];
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  const int pairs = (nq + nk) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    inv_freq_s[i] = 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  __syncthreads();
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int head = j / half;
    const int i = j - head * half;
    float* base = head < nq ? q + (t * nq + head) * head_dim : k + (t * nk + (head - nq)) * head_dim;
    const float inv_freq = inv_freq_s[i];
    float s, c;
    sincosf(pos * inv_freq, &s, &c);
    const float x1 = base[i];
    const float x2 = base[i + half];
    base[i] = x1 * c - x2 * s;
    base[i + half] = x2 * c + x1 * s;
  }
}

__global__ void ConvertToBf16Kernel(const float* src, int64_t n, __nv_bfloat16* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}

__global__ void ConvertToF16Kernel(const float* src, int64_t n, __half* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = __float2half_rn(src[i]);
  }
}

}  // namespace

void LaunchEmbedding(const int32_t* ids, int64_t n, const void* table, int dtype, int64_t vocab_rows,
                     int64_t dim, int64_t vocab_begin, float* out, cudaStream_t stream) {
  if (n <= 0 || dim <= 0) return;
  EmbeddingKernel<<<static_cast<unsigned int>(n), kThreads, 0, stream>>>(
      ids, table, dtype, vocab_rows, dim, vocab_begin, out);
  TP_CUDA_CHECK_LAUNCH("Embedding");
}

void LaunchSiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out, cudaStream_t stream) {
  if (rows <= 0 || inter <= 0) return;
  if (inter % 4 == 0) {
    SiluMulVec4Kernel<<<StreamGrid(rows * inter / 4), kThreads, 0, stream>>>(gate_up, rows, inter, out);
  } else {
    SiluMulKernel<<<StreamGrid(rows * inter), kThreads, 0, stream>>>(gate_up, rows, inter, out);
  }
  TP_CUDA_CHECK_LAUNCH("SiluMul");
}

void LaunchGatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                      cudaStream_t stream) {
  if (n <= 0 || dim <= 0) return;
  GatherRowsKernel<<<static_cast<unsigned int>(n), kThreads, 0, stream>>>(x, rows, dim, out);
  TP_CUDA_CHECK_LAUNCH("GatherRows");
}

void LaunchRope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk, int head_dim,
                float theta, cudaStream_t stream) {
  if (n <= 0 || head_dim < 2 || nq + nk <= 0) return;
  TP_CHECK(head_dim <= kMaxHeadDim) << "RoPE head_dim " << head_dim << " exceeds " << kMaxHeadDim;
  RopeKernel<<<static_cast<unsigned int>(n), 128, 0, stream>>>(q, k, positions, nq, nk, head_dim, theta);
  TP_CUDA_CHECK_LAUNCH("Rope");
}

void LaunchConvertF32(const float* src, int64_t n, int dtype, void* dst, cudaStream_t stream) {
  if (n <= 0) return;
  if (dtype == kDevBF16) {
    ConvertToBf16Kernel<<<StreamGrid(n), kThreads, 0, stream>>>(src, n, static_cast<__nv_bfloat16*>(dst));
  } else {
    TP_CHECK(dtype == kDevF16) << "LaunchConvertF32 to dtype " << dtype;
    ConvertToF16Kernel<<<StreamGrid(n), kThreads, 0, stream>>>(src, n, static_cast<__half*>(dst));
  }
  TP_CUDA_CHECK_LAUNCH("ConvertF32");
}

}  // namespace tpserve::kernels::cuda
