// RoPE from a precomputed cos/sin table, fused with the paged KV-cache write (issue 14 item 4): one
// launch per layer rotates q in place, rotates k (written back for activation dumps) and stores the
// rotated k and v at each token's slot, instead of a RoPE kernel that recomputes inv_freq and sincosf
// per element followed by a separate KV-write kernel that reads k and v again.
// The table (kernels/rope_table.h, built once at load) holds the reference backend's exact float32
// cos / sin for positions [0, table_positions), and the rotation avoids FMA contraction
// (__fmul_rn), so q and k are bitwise the reference's. A position past the table (a contract breach:
// the table covers max_position_embeddings) is computed the same way in the kernel, slowly.
#include <cuda_bf16.h>

#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

__device__ __forceinline__ void StoreCache(float x, float* dst) { *dst = x; }
__device__ __forceinline__ void StoreCache(float x, uint16_t* dst) {
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  *dst = *reinterpret_cast<const uint16_t*>(&b);
}

// cos / sin of rotary pair i at `pos`, as RopeCosSinTable (kernels/rope_table.cc) computes them.
__device__ __forceinline__ void CosSin(const float* __restrict__ table, int table_positions, int pos, int i, int head_dim,
                                       float theta, float* c, float* s) {
  const int half = head_dim / 2;
  if (pos >= 0 && pos < table_positions) {
    const float* e = table + (static_cast<int64_t>(pos) * half + i) * 2;
    *c = e[0];
    *s = e[1];
    return;
  }
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
  const float inv_freq = 1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(exponent)));
  const float angle = __fmul_rn(static_cast<float>(pos), inv_freq);
  *c = static_cast<float>(cos(static_cast<double>(angle)));
  *s = static_cast<float>(sin(static_cast<double>(angle)));
}

// One block per token. Pairs (i, i + half) of every q and k head, then v's row. kv row layout as
// WriteKvKernel: slot * nk * head_dim.
template <typename KvT>
__global__ void RopeWriteKvKernel(RopeWriteKvParams p) {
  const int64_t t = blockIdx.x;
  const int hd = p.head_dim;
  const int half = hd / 2;
  const int pos = p.positions[t];
  const int64_t slot = p.slot_mapping[t];
  const int64_t kv_width = static_cast<int64_t>(p.nk) * hd;
  KvT* __restrict__ kd = slot >= 0 ? static_cast<KvT*>(p.k_cache) + slot * kv_width : nullptr;
  KvT* __restrict__ vd = slot >= 0 ? static_cast<KvT*>(p.v_cache) + slot * kv_width : nullptr;
  const int pairs = (p.nq + p.nk) * half;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int head = j / half;
    const int i = j - head * half;
    float c, s;
    CosSin(p.cos_sin, p.table_positions, pos, i, hd, p.theta, &c, &s);
    const bool is_q = head < p.nq;
    const int64_t off = is_q ? (t * p.nq + head) * hd : (t * p.nk + (head - p.nq)) * hd;
    float* base = (is_q ? p.q : p.k) + off;
    const float x1 = base[i];
    const float x2 = base[i + half];
    const float y1 = __fmul_rn(x1, c) - __fmul_rn(x2, s);
    const float y2 = __fmul_rn(x2, c) + __fmul_rn(x1, s);
    base[i] = y1;
    base[i + half] = y2;
    if (!is_q && kd != nullptr) {
      const int64_t col = static_cast<int64_t>(head - p.nq) * hd + i;
      StoreCache(y1, kd + col);
      StoreCache(y2, kd + col + half);
    }
  }
  if (vd == nullptr) return;
  const float* __restrict__ vs = p.v + t * kv_width;
  for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) StoreCache(vs[i], vd + i);
}

}  // namespace

void LaunchRopeWriteKv(const RopeWriteKvParams& p, cudaStream_t stream) {
  if (p.num_tokens <= 0) return;
  TP_CHECK(p.head_dim >= 2 && p.head_dim % 2 == 0 && p.head_dim <= kMaxHeadDim) << "RoPE head_dim " << p.head_dim;
  const unsigned int grid = static_cast<unsigned int>(p.num_tokens);
  if (p.kv_dtype == kDevF32) {
    RopeWriteKvKernel<float><<<grid, 128, 0, stream>>>(p);
  } else {
    TP_CHECK(p.kv_dtype == kDevBF16) << "KV cache dtype " << p.kv_dtype;
    RopeWriteKvKernel<uint16_t><<<grid, 128, 0, stream>>>(p);
  }
  TP_CUDA_CHECK_LAUNCH("RopeWriteKv");
}

}  // namespace tpserve::kernels::cuda
