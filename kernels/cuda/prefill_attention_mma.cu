// Prefill attention on tensor cores (issue 14 item 3): FlashAttention-2 tiling with bf16
// mma.sync.m16n8k16 (kernels/cuda/mma_bf16.cuh), causal, reading the paged bf16 KV cache through the
// block table, for prefill chunks at any offset (queries past an already cached prefix).
//  - One block per (sequence, kTileQ-query tile, q head); 4 warps, each owns 16 query rows and keeps
//    them in registers: Q (pre-scaled by scale * log2 e, rounded to bf16) as A fragments, the output
//    O [16, head_dim] and the running max / sum as fp32 accumulators.
//  - K and V tiles of TileK keys are staged through shared memory with 16-byte loads: K row-major
//    [key][dim] (an S = Q K^T B fragment is two adjacent dims of one key), V transposed [dim][key] (a
//    P V B fragment is two adjacent keys of one dim); rows padded by 8 bf16 so the fragment reads of a
//    warp hit 32 different banks.
//  - Online softmax in fp32 with exp2; S's accumulator registers become P's A fragments in place.
// Used for bf16 caches with head_dim a multiple of 16 (<= 256); float32 caches (float32 models, whose
// references must stay exact) and other head dims keep the fp32 CUDA-core kernel in
// attention_kernels.cu. A query row's arithmetic depends only on its own position and the key tiles
// [0, TileK), [TileK, 2 TileK), ... fixed from position 0 (tiles past its position add exact zeros),
// and each mma output element depends only on its own row: the result is batch-invariant and
// independent of which other queries share its tile.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mma_bf16.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kTileQ = kMmaWarps * 16;  // 16 query rows per warp (the mma's M)
constexpr int kPad = 8;                 // bf16 of padding per shared row (16 bytes: keeps uint4 stores aligned)
constexpr float kLog2e = 1.4426950408889634f;

// kMaxHd: head_dim bound of the instantiation (registers are sized by it); kTileK: keys per tile
// (smaller for 256 so the static shared memory stays under 48 KB).
template <int kMaxHd>
struct MmaTile {
  static constexpr int kTileK = kMaxHd > 128 ? 32 : 64;
  static constexpr int kKSteps = kMaxHd / 16;  // mma k-steps over head_dim (S = Q K^T)
  static constexpr int kDimTiles = kMaxHd / 8;  // mma n-tiles over head_dim (O = P V)
  static constexpr int kKeyTiles = kTileK / 8;  // mma n-tiles over keys (S)
};

__device__ __forceinline__ uint32_t LoadPair(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// grid: (num_seqs * q_tiles, nq); block: kMmaThreads. head_dim % 16 == 0, head_dim <= kMaxHd.
template <int kMaxHd>
__global__ void __launch_bounds__(kMmaThreads) PrefillAttentionMmaKernel(PagedAttentionParams p, int q_tiles) {
  using T = MmaTile<kMaxHd>;
  constexpr int kTileK = T::kTileK;
  __shared__ __align__(16) uint16_t ks[kTileK][kMaxHd + kPad];  // [key][dim]
  __shared__ __align__(16) uint16_t vt[kMaxHd][kTileK + kPad];  // [dim][key]
  const uint16_t* __restrict__ k_cache = static_cast<const uint16_t*>(p.k_cache);
  const uint16_t* __restrict__ v_cache = static_cast<const uint16_t*>(p.v_cache);
  const int s = blockIdx.x / q_tiles;
  const int qt = blockIdx.x - s * q_tiles;
  const int h = blockIdx.y;
  const int q0 = p.query_start[s];
  const int qlen = p.query_start[s + 1] - q0;
  // Uniform per block, before any barrier. Decode tokens are DecodeAttentionKernel's.
  if (qlen <= 1 || qt * kTileQ >= qlen) return;
  const int hd = p.head_dim;
  const int kvh = h / (p.nq / p.nk);
  const int tile_len = min(kTileQ, qlen - qt * kTileQ);
  const int64_t t0 = static_cast<int64_t>(q0) + qt * kTileQ;
  const int64_t q_stride = static_cast<int64_t>(p.nq) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.nk) * hd;
  const int32_t* __restrict__ block_table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks_per_seq;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;  // fragment row (and row + 8)
  const int t = lane & 3;   // fragment column pair
  const int ksteps = hd / 16;

  // This lane's two query rows: warp * 16 + g and + 8 (-1: past the tile, every key masked).
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
  const int pos_lo = r_lo < tile_len ? p.positions[t0 + r_lo] : -1;
  const int pos_hi = r_hi < tile_len ? p.positions[t0 + r_hi] : -1;
  int max_pos = -1;
  for (int i = 0; i < tile_len; ++i) max_pos = max(max_pos, p.positions[t0 + i]);

  // Q as A fragments, pre-scaled so the softmax is exp2(s - m).
  const float qscale = p.scale * kLog2e;
  uint32_t qa[T::kKSteps][4];
  {
    const float* q_lo = p.q + (t0 + r_lo) * q_stride + static_cast<int64_t>(h) * hd;
    const float* q_hi = p.q + (t0 + r_hi) * q_stride + static_cast<int64_t>(h) * hd;
#pragma unroll
    for (int kk = 0; kk < T::kKSteps; ++kk) {
      const int c = kk * 16 + 2 * t;
      const bool in = kk < ksteps;
      const bool lo = in && r_lo < tile_len, hi = in && r_hi < tile_len;
      qa[kk][0] = lo ? PackBf16x2(q_lo[c] * qscale, q_lo[c + 1] * qscale) : 0u;
      qa[kk][1] = hi ? PackBf16x2(q_hi[c] * qscale, q_hi[c + 1] * qscale) : 0u;
      qa[kk][2] = lo ? PackBf16x2(q_lo[c + 8] * qscale, q_lo[c + 9] * qscale) : 0u;
      qa[kk][3] = hi ? PackBf16x2(q_hi[c + 8] * qscale, q_hi[c + 9] * qscale) : 0u;
    }
  }
  float o[T::kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < T::kDimTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max (log2 units) of rows lo / hi
  float l_lo = 0.0f, l_hi = 0.0f;            // this lane's part of the running sums

  const int vecs = hd / 8;  // 16-byte vectors per K/V row
  const int num_key_tiles = (max_pos + kTileK) / kTileK;
  for (int kt = 0; kt < num_key_tiles; ++kt) {
    __syncthreads();  // every warp is done reading the previous tile
    for (int e = threadIdx.x; e < kTileK * vecs; e += blockDim.x) {
      const int r = e / vecs;
      const int c = (e - r * vecs) * 8;
      const int j = kt * kTileK + r;
      uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = make_uint4(0u, 0u, 0u, 0u);  // zeros: 0 * 0, never NaN
      if (j <= max_pos) {
        const int64_t off = (static_cast<int64_t>(block_table[j / p.block_size]) * p.block_size + j % p.block_size) *
                                kv_stride +
                            static_cast<int64_t>(kvh) * hd + c;
        kv = *reinterpret_cast<const uint4*>(k_cache + off);
        vv = *reinterpret_cast<const uint4*>(v_cache + off);
      }
      *reinterpret_cast<uint4*>(&ks[r][c]) = kv;
      const uint32_t w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        vt[c + 2 * i][r] = static_cast<uint16_t>(w[i] & 0xffffu);
        vt[c + 2 * i + 1][r] = static_cast<uint16_t>(w[i] >> 16);
      }
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows and the tile's keys: [16, kTileK] in kKeyTiles accumulators.
    float sc[T::kKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < T::kKeyTiles; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < T::kKSteps; ++kk) {
        if (kk < ksteps) {
          const uint16_t* krow = &ks[nt * 8 + g][kk * 16 + 2 * t];
          const uint32_t b[2] = {LoadPair(krow), LoadPair(krow + 8)};
          MmaBf16M16N8K16(sc[nt], qa[kk], b);
        }
      }
    }
    // Causal mask and the tile's row maxima (a row's 4 lanes: xor 1, 2).
    float tm_lo = -INFINITY, tm_hi = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < T::kKeyTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = kt * kTileK + nt * 8 + 2 * t + (i & 1);
        const bool hi = i >= 2;
        if (j > (hi ? pos_hi : pos_lo)) sc[nt][i] = -INFINITY;
        if (hi) tm_hi = fmaxf(tm_hi, sc[nt][i]);
        else tm_lo = fmaxf(tm_lo, sc[nt][i]);
      }
    }
    tm_lo = fmaxf(tm_lo, __shfl_xor_sync(0xffffffffu, tm_lo, 1));
    tm_lo = fmaxf(tm_lo, __shfl_xor_sync(0xffffffffu, tm_lo, 2));
    tm_hi = fmaxf(tm_hi, __shfl_xor_sync(0xffffffffu, tm_hi, 1));
    tm_hi = fmaxf(tm_hi, __shfl_xor_sync(0xffffffffu, tm_hi, 2));
    const float mn_lo = fmaxf(m_lo, tm_lo), mn_hi = fmaxf(m_hi, tm_hi);
    // A row with no visible key yet keeps m = -inf: use 0 as its base so exp2(-inf - 0) = 0, no NaN.
    const float base_lo = mn_lo == -INFINITY ? 0.0f : mn_lo;
    const float base_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
    const float alpha_lo = exp2f(m_lo - base_lo), alpha_hi = exp2f(m_hi - base_hi);
    m_lo = mn_lo;
    m_hi = mn_hi;
    float ps_lo = 0.0f, ps_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < T::kKeyTiles; ++nt) {
      sc[nt][0] = exp2f(sc[nt][0] - base_lo);
      sc[nt][1] = exp2f(sc[nt][1] - base_lo);
      sc[nt][2] = exp2f(sc[nt][2] - base_hi);
      sc[nt][3] = exp2f(sc[nt][3] - base_hi);
      ps_lo += sc[nt][0] + sc[nt][1];
      ps_hi += sc[nt][2] + sc[nt][3];
    }
    l_lo = l_lo * alpha_lo + ps_lo;
    l_hi = l_hi * alpha_hi + ps_hi;
#pragma unroll
    for (int dt = 0; dt < T::kDimTiles; ++dt) {
      o[dt][0] *= alpha_lo;
      o[dt][1] *= alpha_lo;
      o[dt][2] *= alpha_hi;
      o[dt][3] *= alpha_hi;
    }
    // O += P V: P's A fragment for keys [16 kk, 16 kk + 16) is S's accumulators of key tiles 2 kk, 2 kk + 1.
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) {
      const uint32_t pa[4] = {PackBf16x2(sc[2 * kk][0], sc[2 * kk][1]), PackBf16x2(sc[2 * kk][2], sc[2 * kk][3]),
                              PackBf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              PackBf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < T::kDimTiles; ++dt) {
        if (dt * 8 < hd) {
          const uint16_t* vrow = &vt[dt * 8 + g][kk * 16 + 2 * t];
          const uint32_t b[2] = {LoadPair(vrow), LoadPair(vrow + 8)};
          MmaBf16M16N8K16(o[dt], pa, b);
        }
      }
    }
  }

  // Row sums over the row's 4 lanes (fixed order), normalise, store rows inside the tile.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f;
  const float inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
  float* out_lo = p.out + (t0 + r_lo) * q_stride + static_cast<int64_t>(h) * hd;
  float* out_hi = p.out + (t0 + r_hi) * q_stride + static_cast<int64_t>(h) * hd;
#pragma unroll
  for (int dt = 0; dt < T::kDimTiles; ++dt) {
    const int d = dt * 8 + 2 * t;
    if (d >= hd) continue;
    if (r_lo < tile_len) *reinterpret_cast<float2*>(out_lo + d) = make_float2(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
    if (r_hi < tile_len) *reinterpret_cast<float2*>(out_hi + d) = make_float2(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
  }
}

}  // namespace

bool PrefillAttentionUsesMma(const PagedAttentionParams& p) {
  return p.kv_dtype == kDevBF16 && p.head_dim % 16 == 0 && p.head_dim <= 256;
}

void LaunchPrefillAttentionMma(const PagedAttentionParams& p, cudaStream_t stream) {
  TP_CHECK(PrefillAttentionUsesMma(p)) << "kv dtype " << p.kv_dtype << " head_dim " << p.head_dim;
  const int q_tiles = (p.max_query_len + kTileQ - 1) / kTileQ;
  const dim3 grid(static_cast<unsigned int>(static_cast<int64_t>(p.num_seqs) * q_tiles), static_cast<unsigned int>(p.nq));
  if (p.head_dim <= 128) {
    PrefillAttentionMmaKernel<128><<<grid, kMmaThreads, 0, stream>>>(p, q_tiles);
  } else {
    PrefillAttentionMmaKernel<256><<<grid, kMmaThreads, 0, stream>>>(p, q_tiles);
  }
  TP_CUDA_CHECK_LAUNCH("PrefillAttentionMma");
}

}  // namespace tpserve::kernels::cuda
