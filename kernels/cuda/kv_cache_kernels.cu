// Writes this step's K and V (fp32) into the paged cache (float32 or bf16) at each token's slot.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

// One block per token. The cache layout [num_blocks, block_size, nk, head_dim] makes slot
// (block * block_size + offset) the row index of a [num_slots, nk * head_dim] matrix.
__device__ __forceinline__ float ToCache(float x, float*) { return x; }
__device__ __forceinline__ __nv_bfloat16 ToCache(float x, __nv_bfloat16*) { return __float2bfloat16_rn(x); }

template <typename KvT>
__global__ void WriteKvKernel(const float* __restrict__ k, const float* __restrict__ v,
                              const int32_t* __restrict__ slot_mapping, int64_t kv_width, KvT* __restrict__ k_cache,
                              KvT* __restrict__ v_cache) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const float* ks = k + t * kv_width;
  const float* vs = v + t * kv_width;
  KvT* kd = k_cache + slot * kv_width;
  KvT* vd = v_cache + slot * kv_width;
  for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
    kd[i] = ToCache(ks[i], kd);
    vd[i] = ToCache(vs[i], vd);
  }
}

}  // namespace

void LaunchWriteKv(const float* k, const float* v, const int32_t* slot_mapping, int64_t num_tokens,
                   int64_t kv_width, int kv_dtype, void* k_cache, void* v_cache, cudaStream_t stream) {
  if (num_tokens <= 0 || kv_width <= 0) return;
  const unsigned int grid = static_cast<unsigned int>(num_tokens);
  if (kv_dtype == kDevF32) {
    WriteKvKernel<float><<<grid, 256, 0, stream>>>(k, v, slot_mapping, kv_width, static_cast<float*>(k_cache),
                                                   static_cast<float*>(v_cache));
  } else {
    TP_CHECK(kv_dtype == kDevBF16) << "KV cache dtype " << kv_dtype;
    WriteKvKernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(k, v, slot_mapping, kv_width,
                                                           static_cast<__nv_bfloat16*>(k_cache),
                                                           static_cast<__nv_bfloat16*>(v_cache));
  }
  TP_CUDA_CHECK_LAUNCH("WriteKv");
}

}  // namespace tpserve::kernels::cuda
