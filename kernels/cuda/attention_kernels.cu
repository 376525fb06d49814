// Paged causal GQA attention over the KV cache (float32 or bf16, the model's choice), for a mixed batch of prefill chunks and decodes.
//  - Prefill chunks (query_len > 1): one block per (sequence, 16-query tile, q head); K/V tiles of 32
//    keys are staged in shared memory (fp32) and every query keeps a flash-style online softmax.
//  - Decode tokens (query_len == 1): split-K ("flash decoding"): one block per (sequence, q head,
//    512-key chunk) writes a partial (max, sum, unnormalised output); a combine pass merges the chunks.
//    Contexts of one chunk write the output directly.
// Every query's arithmetic depends only on its own position and keys (fixed tile and chunk boundaries,
// fixed-order reductions), so results are batch-invariant.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kQueriesPerWarp = 4;
constexpr int kTileQ = kWarps * kQueriesPerWarp;  // queries per prefill block
constexpr int kTileK = 32;                        // keys per shared-memory tile (one per lane)
constexpr int kDimsPerLane = kMaxHeadDim / 32;    // output dims d = lane + 32 * i

// The cache holds float32 (float32 models: exact references) or bf16 bits.
__device__ __forceinline__ float CacheValue(const uint16_t* cache, int64_t i) { return Bf16BitsToFloat(cache[i]); }
__device__ __forceinline__ float CacheValue(const float* cache, int64_t i) { return cache[i]; }

// Element offset of key position j's head `kvh` in the cache of sequence `block_table`.
__device__ __forceinline__ int64_t KeyOffset(const int32_t* block_table, int j, int block_size, int64_t kv_stride,
                                             int kvh, int head_dim) {
  const int64_t block = block_table[j / block_size];
  return (block * block_size + j % block_size) * kv_stride + static_cast<int64_t>(kvh) * head_dim;
}

size_t PrefillSharedBytes(int head_dim) {
  return sizeof(float) * (static_cast<size_t>(kTileQ) * head_dim + static_cast<size_t>(kTileK) * (head_dim + 1) +
                          static_cast<size_t>(kTileK) * head_dim);
}

// grid: (num_seqs * q_tiles, nq); block: kThreads; dynamic smem: PrefillSharedBytes(head_dim).
template <typename KvT>
__global__ void __launch_bounds__(kThreads) PrefillAttentionKernel(PagedAttentionParams p, int q_tiles) {
  const KvT* k_cache = static_cast<const KvT*>(p.k_cache);
  const KvT* v_cache = static_cast<const KvT*>(p.v_cache);
  extern __shared__ float smem[];
  const int hd = p.head_dim;
  float* qs = smem;                          // [kTileQ, hd], pre-scaled
  float* ks = qs + kTileQ * hd;              // [kTileK, hd + 1] (padded: lanes read different rows)
  float* vs = ks + kTileK * (hd + 1);        // [kTileK, hd]
  const int s = blockIdx.x / q_tiles;
  const int qt = blockIdx.x - s * q_tiles;
  const int h = blockIdx.y;
  const int kvh = h / (p.nq / p.nk);
  const int q0 = p.query_start[s];
  const int qlen = p.query_start[s + 1] - q0;
  // Uniform per block, before any barrier. Decode tokens are handled by DecodeAttentionKernel.
  if (qlen <= 1 || qt * kTileQ >= qlen) return;
  const int tile_len = min(kTileQ, qlen - qt * kTileQ);
  const int64_t t0 = static_cast<int64_t>(q0) + qt * kTileQ;
  const int64_t q_stride = static_cast<int64_t>(p.nq) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.nk) * hd;
  const int32_t* block_table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks_per_seq;

  for (int e = threadIdx.x; e < kTileQ * hd; e += blockDim.x) {
    const int i = e / hd;
    const int d = e - i * hd;
    qs[e] = i < tile_len ? p.q[(t0 + i) * q_stride + static_cast<int64_t>(h) * hd + d] * p.scale : 0.0f;
  }
  int max_pos = -1;
  for (int i = 0; i < tile_len; ++i) max_pos = max(max_pos, p.positions[t0 + i]);

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  bool valid[kQueriesPerWarp];
  int pos[kQueriesPerWarp];
  float m_run[kQueriesPerWarp], l_run[kQueriesPerWarp], acc[kQueriesPerWarp][kDimsPerLane];
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    const int i = warp * kQueriesPerWarp + qi;
    valid[qi] = i < tile_len;
    pos[qi] = valid[qi] ? p.positions[t0 + i] : -1;
    m_run[qi] = -INFINITY;
    l_run[qi] = 0.0f;
#pragma unroll
    for (int dd = 0; dd < kDimsPerLane; ++dd) acc[qi][dd] = 0.0f;
  }

  const int num_key_tiles = (max_pos + kTileK) / kTileK;  // tiles covering keys [0, max_pos]
  for (int kt = 0; kt < num_key_tiles; ++kt) {
    __syncthreads();  // the previous tile (and, first time, nothing) is no longer read; Q is written
    for (int e = threadIdx.x; e < kTileK * hd; e += blockDim.x) {
      const int r = e / hd;
      const int d = e - r * hd;
      const int j = kt * kTileK + r;
      float kv = 0.0f, vv = 0.0f;
      if (j <= max_pos) {
        const int64_t off = KeyOffset(block_table, j, p.block_size, kv_stride, kvh, hd) + d;
        kv = CacheValue(k_cache, off);
        vv = CacheValue(v_cache, off);
      }
      ks[r * (hd + 1) + d] = kv;
      vs[r * hd + d] = vv;
    }
    __syncthreads();

    // Lane `lane` scores key j against the warp's queries.
    const int j = kt * kTileK + lane;
    float sc[kQueriesPerWarp];
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) sc[qi] = 0.0f;
    const float* krow = ks + lane * (hd + 1);
    const float* qbase = qs + warp * kQueriesPerWarp * hd;
#pragma unroll 4
    for (int d = 0; d < hd; ++d) {
      const float kd = krow[d];
#pragma unroll
      for (int qi = 0; qi < kQueriesPerWarp; ++qi) sc[qi] = fmaf(qbase[qi * hd + d], kd, sc[qi]);
    }

#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
      // valid[qi], pos[qi], m_run[qi] are warp-uniform, so the branches below are too.
      const bool visible = valid[qi] && j <= pos[qi];
      const float sv = visible ? sc[qi] : -INFINITY;
      const float m_new = fmaxf(m_run[qi], WarpMax(sv));
      if (m_new == -INFINITY) continue;  // no visible key yet
      const float alpha = expf(m_run[qi] - m_new);  // 0 on the first visible tile
      const float pj = visible ? expf(sv - m_new) : 0.0f;
      l_run[qi] = l_run[qi] * alpha + WarpSum(pj);
#pragma unroll
      for (int dd = 0; dd < kDimsPerLane; ++dd) acc[qi][dd] *= alpha;
      for (int r = 0; r < kTileK; ++r) {
        const float pr = __shfl_sync(0xffffffffu, pj, r);
        const float* vrow = vs + r * hd;
#pragma unroll
        for (int dd = 0; dd < kDimsPerLane; ++dd) {
          const int d = lane + 32 * dd;
          if (d < hd) acc[qi][dd] = fmaf(pr, vrow[d], acc[qi][dd]);
        }
      }
      m_run[qi] = m_new;
    }
  }

#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    if (!valid[qi]) continue;
    const int i = warp * kQueriesPerWarp + qi;
    float* o = p.out + (t0 + i) * q_stride + static_cast<int64_t>(h) * hd;
    const float inv = l_run[qi] > 0.0f ? 1.0f / l_run[qi] : 0.0f;
#pragma unroll
    for (int dd = 0; dd < kDimsPerLane; ++dd) {
      const int d = lane + 32 * dd;
      if (d < hd) o[d] = acc[qi][dd] * inv;
    }
  }
}

struct DecodeScratch {
  float* acc;  // [num_seqs, nq, max_splits, head_dim], unnormalised
  float* max;  // [num_seqs, nq, max_splits]
  float* sum;  // [num_seqs, nq, max_splits]
};

__device__ __forceinline__ DecodeScratch SplitScratch(const PagedAttentionParams& p, int max_splits) {
  const int64_t parts = static_cast<int64_t>(p.num_seqs) * p.nq * max_splits;
  return DecodeScratch{p.scratch, p.scratch + parts * p.head_dim, p.scratch + parts * (p.head_dim + 1)};
}

// Number of kDecodeSplitKeys chunks for a decode token at `pos`, at most max_splits (a context longer
// than max_context_len breaks the caller's contract; its extra keys are ignored, memory stays safe).
__device__ __forceinline__ int NumSplits(int pos, int max_splits) {
  return min((pos + kDecodeSplitKeys) / kDecodeSplitKeys, max_splits);
}

// grid: (num_seqs, nq, max_splits); block: kThreads.
template <typename KvT>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(PagedAttentionParams p, int max_splits) {
  const KvT* k_cache = static_cast<const KvT*>(p.k_cache);
  const KvT* v_cache = static_cast<const KvT*>(p.v_cache);
  __shared__ float q_s[kMaxHeadDim];
  __shared__ float scores[kDecodeSplitKeys];
  __shared__ float red[32];
  __shared__ float acc_s[kWarps][kMaxHeadDim];
  const int s = blockIdx.x;
  const int h = blockIdx.y;
  const int split = blockIdx.z;
  const int q0 = p.query_start[s];
  if (p.query_start[s + 1] - q0 != 1) return;  // prefill chunks are PrefillAttentionKernel's
  const int pos = p.positions[q0];
  if (pos < 0) return;
  const int num_splits = NumSplits(pos, max_splits);
  if (split >= num_splits) return;
  const int start = split * kDecodeSplitKeys;
  const int end = min(pos + 1, start + kDecodeSplitKeys);
  const int n = end - start;
  const int hd = p.head_dim;
  const int kvh = h / (p.nq / p.nk);
  const int64_t q_stride = static_cast<int64_t>(p.nq) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.nk) * hd;
  const int32_t* block_table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks_per_seq;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    q_s[d] = p.q[static_cast<int64_t>(q0) * q_stride + static_cast<int64_t>(h) * hd + d] * p.scale;
  }
  __syncthreads();

  // Scores: one warp per key, lanes split head_dim (coalesced reads of the key row).
  for (int j = start + warp; j < end; j += kWarps) {
    const KvT* krow = k_cache + KeyOffset(block_table, j, p.block_size, kv_stride, kvh, hd);
    float part = 0.0f;
    for (int d = lane; d < hd; d += 32) part = fmaf(q_s[d], CacheValue(krow, d), part);
    part = WarpSum(part);
    if (lane == 0) scores[j - start] = part;
  }
  __syncthreads();

  float mx = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, scores[i]);
  mx = BlockMax(mx, red);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(scores[i] - mx);
    scores[i] = e;
    sum += e;
  }
  sum = BlockSum(sum, red);  // its barriers also publish the exp'd scores

  float acc[kDimsPerLane];
#pragma unroll
  for (int dd = 0; dd < kDimsPerLane; ++dd) acc[dd] = 0.0f;
  for (int j = start + warp; j < end; j += kWarps) {
    const KvT* vrow = v_cache + KeyOffset(block_table, j, p.block_size, kv_stride, kvh, hd);
    const float pj = scores[j - start];
#pragma unroll
    for (int dd = 0; dd < kDimsPerLane; ++dd) {
      const int d = lane + 32 * dd;
      if (d < hd) acc[dd] = fmaf(pj, CacheValue(vrow, d), acc[dd]);
    }
  }
#pragma unroll
  for (int dd = 0; dd < kDimsPerLane; ++dd) {
    const int d = lane + 32 * dd;
    if (d < hd) acc_s[warp][d] = acc[dd];
  }
  __syncthreads();

  const DecodeScratch scratch = SplitScratch(p, max_splits);
  const int64_t part = (static_cast<int64_t>(s) * p.nq + h) * max_splits + split;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += acc_s[w][d];
    if (num_splits == 1) {
      p.out[static_cast<int64_t>(q0) * q_stride + static_cast<int64_t>(h) * hd + d] = v / sum;
    } else {
      scratch.acc[part * hd + d] = v;
    }
  }
  if (num_splits > 1 && threadIdx.x == 0) {
    scratch.max[part] = mx;
    scratch.sum[part] = sum;
  }
}

// grid: (num_seqs, nq); block: kThreads. Merges the splits of decode tokens with more than one.
__global__ void __launch_bounds__(kThreads) DecodeCombineKernel(PagedAttentionParams p, int max_splits) {
  const int s = blockIdx.x;
  const int h = blockIdx.y;
  const int q0 = p.query_start[s];
  if (p.query_start[s + 1] - q0 != 1) return;
  const int pos = p.positions[q0];
  if (pos < 0) return;
  const int num_splits = NumSplits(pos, max_splits);
  if (num_splits <= 1) return;
  const DecodeScratch scratch = SplitScratch(p, max_splits);
  const int64_t part0 = (static_cast<int64_t>(s) * p.nq + h) * max_splits;
  float mx = -INFINITY;
  for (int i = 0; i < num_splits; ++i) mx = fmaxf(mx, scratch.max[part0 + i]);
  float total = 0.0f;
  for (int i = 0; i < num_splits; ++i) total += scratch.sum[part0 + i] * expf(scratch.max[part0 + i] - mx);
  const int hd = p.head_dim;
  float* o = p.out + static_cast<int64_t>(q0) * p.nq * hd + static_cast<int64_t>(h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float v = 0.0f;
    for (int i = 0; i < num_splits; ++i) {
      v += scratch.acc[(part0 + i) * hd + d] * expf(scratch.max[part0 + i] - mx);
    }
    o[d] = v / total;
  }
}

int MaxSplits(const PagedAttentionParams& p) {
  return std::max(1, (p.max_context_len + kDecodeSplitKeys - 1) / kDecodeSplitKeys);
}

}  // namespace

int64_t DecodeScratchFloats(const PagedAttentionParams& p) {
  const int max_splits = MaxSplits(p);
  if (max_splits <= 1) return 0;
  return static_cast<int64_t>(p.num_seqs) * p.nq * max_splits * (p.head_dim + 2);
}

cudaError_t ConfigureAttentionKernels() {
  const int smem = static_cast<int>(PrefillSharedBytes(kMaxHeadDim));
  cudaError_t e = cudaFuncSetAttribute(PrefillAttentionKernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(PrefillAttentionKernel<uint16_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
}

namespace {

template <typename KvT>
void LaunchPagedAttentionT(const PagedAttentionParams& p, cudaStream_t stream) {
  TP_CHECK(p.head_dim > 0 && p.head_dim <= kMaxHeadDim) << "head_dim " << p.head_dim;
  TP_CHECK(p.nk > 0 && p.nq % p.nk == 0) << "nq " << p.nq << " nk " << p.nk;
  if (p.max_query_len > 1) {
    const int q_tiles = (p.max_query_len + kTileQ - 1) / kTileQ;
    const dim3 grid(static_cast<unsigned int>(static_cast<int64_t>(p.num_seqs) * q_tiles),
                    static_cast<unsigned int>(p.nq));
    PrefillAttentionKernel<KvT><<<grid, kThreads, PrefillSharedBytes(p.head_dim), stream>>>(p, q_tiles);
    TP_CUDA_CHECK_LAUNCH("PrefillAttention");
  }
  const int max_splits = MaxSplits(p);
  TP_CHECK(max_splits == 1 || p.scratch != nullptr) << "decode attention needs split scratch";
  const dim3 grid(static_cast<unsigned int>(p.num_seqs), static_cast<unsigned int>(p.nq),
                  static_cast<unsigned int>(max_splits));
  DecodeAttentionKernel<KvT><<<grid, kThreads, 0, stream>>>(p, max_splits);
  TP_CUDA_CHECK_LAUNCH("DecodeAttention");
  if (max_splits > 1) {
    DecodeCombineKernel<<<dim3(static_cast<unsigned int>(p.num_seqs), static_cast<unsigned int>(p.nq)), kThreads,
                          0, stream>>>(p, max_splits);
    TP_CUDA_CHECK_LAUNCH("DecodeCombine");
  }
}

}  // namespace

void LaunchPagedAttention(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.num_seqs <= 0 || p.max_query_len <= 0) return;
  if (p.kv_dtype == kDevF32) {
    LaunchPagedAttentionT<float>(p, stream);
  } else {
    TP_CHECK(p.kv_dtype == kDevBF16) << "KV cache dtype " << p.kv_dtype;
    LaunchPagedAttentionT<uint16_t>(p, stream);
  }
}

}  // namespace tpserve::kernels::cuda
