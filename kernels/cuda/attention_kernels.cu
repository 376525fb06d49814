// Paged causal GQA attention over the KV cache (float32 or bf16, the model's choice), for a mixed
// batch of prefill chunks and decodes.
//  - Prefill chunks (query_len > 1) of bf16 caches with head_dim % 16 == 0 run on tensor cores
//    (prefill_attention_mma.cu). The rest (float32 caches: float32 models, whose references stay exact;
//    odd head dims) run here, fp32 on CUDA cores: one block per (sequence, 16-query tile, q head); K/V
//    tiles of 32 keys are staged in shared memory (fp32) and every query keeps a flash-style online softmax.
//  - Decode tokens (query_len == 1): FlashDecoding / paged-attention-v2: one block per (sequence, q head,
//    kDecodeSplitKeys-key chunk) stages the chunk's block-table entries in shared memory, reads K and V
//    rows with 16-byte loads by groups of lanes (several rows in flight per warp), and writes a partial
//    (max, sum, unnormalised output); one combine kernel merges the chunks. Contexts of one chunk write
//    the output directly.
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

// ---- decode: FlashDecoding / paged-attention-v2 ----
// A key (or value) row of head_dim elements is read by a group of kDecodeLanes(hd) lanes, each with one
// 16-byte load (8 bf16 or 4 float) when head_dim allows (else element by element), so a warp covers
// 32 / lanes rows per pass and keeps kDecodeUnroll passes of loads in flight before reducing. Each lane
// holds at most kMaxLaneElems = kMaxHeadDim / 32 elements of a row.
constexpr int kMaxLaneElems = kMaxHeadDim / 32;
constexpr int kDecodeUnroll = 4;

// Row layout for one block: vectors of kVec elements per row, lanes per row (power of two <= 32),
// vectors per lane. Uniform across the grid.
struct RowLayout {
  int vec, nvec, lanes, per_lane;
};
template <int kVec>
__device__ __forceinline__ RowLayout DecodeRowLayout(int hd) {
  RowLayout r;
  r.vec = kVec;
  r.nvec = hd / kVec;
  r.lanes = 1;
  while (r.lanes < r.nvec && r.lanes < 32) r.lanes <<= 1;
  r.per_lane = (r.nvec + r.lanes - 1) / r.lanes;
  return r;
}

// Loads kN (1, 4 or 8) consecutive elements at row[i..i+kN) as floats; one 16-byte load when kN > 1.
template <int kN>
__device__ __forceinline__ void LoadRow(const uint16_t* __restrict__ row, int i, float* out) {
  if constexpr (kN == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(row + i);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = __uint_as_float(w[k] << 16);
      out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  } else {
    out[0] = Bf16BitsToFloat(row[i]);
  }
}
template <int kN>
__device__ __forceinline__ void LoadRow(const float* __restrict__ row, int i, float* out) {
  if constexpr (kN == 4) {
    const float4 f = *reinterpret_cast<const float4*>(row + i);
    out[0] = f.x, out[1] = f.y, out[2] = f.z, out[3] = f.w;
  } else {
    out[0] = row[i];
  }
}

// Sum over the `lanes` lanes of a row group (xor butterfly inside the group: fixed order).
__device__ __forceinline__ float GroupSum(float v, int lanes) {
  for (int o = lanes >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid: (num_seqs, nq, max_splits); block: kThreads. One block scores, softmaxes and sums the values of
// keys [split * kDecodeSplitKeys, ...) for one (sequence, q head); its block-table entries are staged in
// shared memory first, so the key loop never waits on a dependent global load. kVec: elements per load
// (16 bytes' worth when head_dim is a multiple of it, else 1); compile-time so the row buffers stay in
// registers.
template <typename KvT, int kVec>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(PagedAttentionParams p, int max_splits) {
  const KvT* __restrict__ k_cache = static_cast<const KvT*>(p.k_cache);
  const KvT* __restrict__ v_cache = static_cast<const KvT*>(p.v_cache);
  __shared__ float scores[kDecodeSplitKeys];
  __shared__ int32_t blocks[kDecodeSplitKeys + 2];
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
  const int bs = p.block_size;
  const int kvh = h / (p.nq / p.nk);
  const int64_t q_stride = static_cast<int64_t>(p.nq) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.nk) * hd;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  // Block-table entries covering [start, end).
  const int first_block = start / bs;
  const int num_blocks = (end - 1) / bs - first_block + 1;
  const int32_t* table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks_per_seq + first_block;
  for (int i = threadIdx.x; i < num_blocks; i += blockDim.x) blocks[i] = table[i];

  const RowLayout L = DecodeRowLayout<kVec>(hd);
  const int group = lane / L.lanes;       // which row of the pass this lane works on
  const int gl = lane - group * L.lanes;  // lane within the row group
  const int rows_per_pass = 32 / L.lanes;
  // This lane's elements of q (pre-scaled): vectors gl + L.lanes * v, v < L.per_lane.
  float qr[kMaxLaneElems];
  const float* qrow = p.q + static_cast<int64_t>(q0) * q_stride + static_cast<int64_t>(h) * hd;
#pragma unroll
  for (int e = 0; e < kMaxLaneElems; ++e) {
    const int v = e / kVec, k = e - v * kVec;
    const int vi = gl + L.lanes * v;
    qr[e] = (v < L.per_lane && vi < L.nvec) ? qrow[vi * kVec + k] * p.scale : 0.0f;
  }
  __syncthreads();  // blocks[] is visible

  auto row_offset = [&](int j) -> int64_t {
    const int64_t block = blocks[j / bs - first_block];
    return (block * bs + j % bs) * kv_stride + static_cast<int64_t>(kvh) * hd;
  };

  // Scores: warp w takes rows w * rows_per_pass + group of every step of kWarps * rows_per_pass.
  const int step = kWarps * rows_per_pass;
  for (int base = start + warp * rows_per_pass; base < end; base += step * kDecodeUnroll) {
    float part[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int j = base + u * step + group;
      part[u] = 0.0f;
      if (j < end) {
        const KvT* krow = k_cache + row_offset(j);
        float kv[kMaxLaneElems];
#pragma unroll
        for (int v = 0; v < kMaxLaneElems; ++v) {
          const int vi = gl + L.lanes * v;
          if (v * kVec < kMaxLaneElems && v < L.per_lane && vi < L.nvec) {
            LoadRow<kVec>(krow, vi * kVec, kv + v * kVec);
          }
        }
#pragma unroll
        for (int e = 0; e < kMaxLaneElems; ++e) {
          const int v = e / kVec;
          if (v < L.per_lane && gl + L.lanes * v < L.nvec) part[u] = fmaf(qr[e], kv[e], part[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const float dot = GroupSum(part[u], L.lanes);
      const int j = base + u * step + group;
      if (gl == 0 && j < end) scores[j - start] = dot;
    }
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

  // Values: the same row mapping; each lane accumulates its elements over its rows.
  float acc[kMaxLaneElems];
#pragma unroll
  for (int e = 0; e < kMaxLaneElems; ++e) acc[e] = 0.0f;
  for (int base = start + warp * rows_per_pass; base < end; base += step * kDecodeUnroll) {
    float vv[kDecodeUnroll][kMaxLaneElems];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int j = base + u * step + group;
      if (j < end) {
        const KvT* vrow = v_cache + row_offset(j);
#pragma unroll
        for (int v = 0; v < kMaxLaneElems; ++v) {
          const int vi = gl + L.lanes * v;
          if (v * kVec < kMaxLaneElems && v < L.per_lane && vi < L.nvec) {
            LoadRow<kVec>(vrow, vi * kVec, vv[u] + v * kVec);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int j = base + u * step + group;
      if (j >= end) continue;
      const float pj = scores[j - start];
#pragma unroll
      for (int e = 0; e < kMaxLaneElems; ++e) {
        const int v = e / kVec;
        if (v < L.per_lane && gl + L.lanes * v < L.nvec) acc[e] = fmaf(pj, vv[u][e], acc[e]);
      }
    }
  }
  // Sum the row groups of the warp (xor over the group index bits: fixed order), then the warps.
#pragma unroll
  for (int e = 0; e < kMaxLaneElems; ++e) {
    for (int o = L.lanes; o < 32; o <<= 1) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
  }
  if (group == 0) {
#pragma unroll
    for (int e = 0; e < kMaxLaneElems; ++e) {
      const int v = e / kVec, k = e - v * kVec;
      const int vi = gl + L.lanes * v;
      if (v < L.per_lane && vi < L.nvec) acc_s[warp][vi * kVec + k] = acc[e];
    }
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
  if (p.max_query_len > 1 && PrefillAttentionUsesMma(p)) {
    LaunchPrefillAttentionMma(p, stream);
  } else if (p.max_query_len > 1) {
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
  constexpr int kVec = 16 / static_cast<int>(sizeof(KvT));
  if (p.head_dim % kVec == 0) {
    DecodeAttentionKernel<KvT, kVec><<<grid, kThreads, 0, stream>>>(p, max_splits);
  } else {
    DecodeAttentionKernel<KvT, 1><<<grid, kThreads, 0, stream>>>(p, max_splits);
  }
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
