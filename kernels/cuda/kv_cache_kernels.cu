// Writes this step's K and V (fp32) into the paged bf16 cache at each token's slot.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

// One block per token. The cache layout [num_blocks, block_size, nk, head_dim] makes slot
// (block * block_size + offset) the row index of a [num_slots, nk * head_dim] matrix.
__global__ void WriteKvKernel(const float* k, const float* v, const int32_t* slot_mapping, int64_t kv_width,
                              __nv_bfloat16* k_cache, __nv_bfloat16* v_cache) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const float* ks = k + t * kv_width;
  const float* vs = v + t * kv_width;
  __nv_bfloat16* kd = k_cache + slot * kv_width;
  __nv_bfloat16* vd = v_cache + slot * kv_width;
  for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) {
    kd[i] = __float2bfloat16_rn(ks[i]);
    vd[i] = __float2bfloat16_rn(vs[i]);
  }
}

}  // namespace

void LaunchWriteKv(const float* k, const float* v, const int32_t* slot_mapping, int64_t num_tokens,
                   int64_t kv_width, uint16_t* k_cache, uint16_t* v_cache, cudaStream_t stream) {
  if (num_tokens <= 0 || kv_width <= 0) return;
  WriteKvKernel<<<static_cast<unsigned int>(num_tokens), 256, 0, stream>>>(
      k, v, slot_mapping, kv_width, reinterpret_cast<__nv_bfloat16*>(k_cache),
      reinterpret_cast<__nv_bfloat16*>(v_cache));
  TP_CUDA_CHECK_LAUNCH("WriteKv");
}

}  // namespace tpserve::kernels::cuda
