// The per-ISA kernel table of the CPU backend. Each ISA translation unit (kernels_scalar.cc,
// kernels_avx2.cc, kernels_avx512.cc) fills one table; cpu_backend.cc picks it at runtime and splits
// the work across its thread pool. Kernels are single-threaded and work on a caller-chosen slice.
//
// Batch invariance: every output element is produced by one call on one thread with a fixed operation
// sequence that depends only on that element's inputs (never on m, the slice bounds or the thread).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace tpserve::kernels::cpu {

struct MatmulJob {
  const float* x = nullptr;      // [m, k] float32 activations
  const uint16_t* xb = nullptr;  // [m, k] x rounded to bf16, set when the kernel's bf16_dot(w) is true
  const float* xs = nullptr;     // [m, SplitXCols(k)] x rows by split_x_row, set when split_x(w) is true
  const uint16_t* xp = nullptr;  // xb packed by the table's pack_x_block, set when pack_x(w, k)
  int64_t m = 0;
  int64_t k = 0;
  const void* w = nullptr;  // [n, k] weights in `wdt`
  DType wdt = DType::kF32;
  const float* scales = nullptr;  // kI8 (int8 pair panels only): [n], y[:, o] = scales[o] * dot
  bool int8_blocks = false;       // kI8 in WeightLayout::kInt8PairBlocks (bf16_pair_panels.h)
  int64_t n = 0;
  float* y = nullptr;  // [m, n]
};

// `tokens` query tokens of one sequence against one KV head of paged attention: each token's `group`
// query heads that share KV head `kv_head`. Tokens of a job walk the keys together, chunk by chunk, so a
// prefill reads each K/V row once per job instead of once per token; every token's arithmetic is the
// same as if it ran alone (batch invariance).
struct AttentionJob {
  const float* q = nullptr;  // token i: [group, head_dim] at q + i * q_stride
  float* out = nullptr;      // token i: [group, head_dim] at out + i * q_stride
  int64_t q_stride = 0;
  int tokens = 1;
  const int* contexts = nullptr;  // token i attends to keys [0, contexts[i])
  const void* k_cache = nullptr;  // layer's K: [num_blocks, block_size, num_kv_heads, head_dim] in kv_dtype
  const void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;  // kF32 or kBF16
  const int32_t* block_table = nullptr;  // this sequence's blocks
  int block_size = 0;
  int num_kv_heads = 0;
  int kv_head = 0;
  int head_dim = 0;
  int group = 0;
  float scale = 0.0f;
  float* scratch = nullptr;  // >= AttentionScratchFloats(tokens, group, head_dim) floats
};
inline int64_t AttentionScratchFloats(int tokens, int group, int head_dim) {
  return static_cast<int64_t>(tokens) * group * (head_dim + 2) + static_cast<int64_t>(group) * 32 + 64;
}

struct CpuKernels {
  const char* name;
  // True when matmul for this weight dtype reads job.xb (bf16-rounded x) instead of job.x.
  bool (*bf16_dot)(DType wdt);
  // y[:, n_begin:n_end] for all m rows.
  void (*matmul)(const MatmulJob& job, int64_t n_begin, int64_t n_end);
  void (*round_to_bf16)(const float* x, int64_t n, uint16_t* out);
  // Converts n weight elements to float32 (embedding rows).
  void (*convert_row)(const void* src, DType dt, int64_t n, float* out);
  // One row of d: out = x / sqrt(mean(x²) + eps) * w.  x and out may alias.
  void (*rms_norm_row)(const float* x, int64_t d, const void* w, DType wdt, float eps, float* out);
  // One row: residual += x; out = RmsNorm(residual).
  void (*add_rms_norm_row)(float* residual, const float* x, int64_t d, const void* w, DType wdt, float eps,
                           float* out);
  // out[i] = silu(g[i]) * u[i]
  void (*silu_mul)(const float* g, const float* u, int64_t n, float* out);
  // rotate_half RoPE of `heads` heads of one token in place; cos/sin: [head_dim / 2].
  void (*rope)(float* x, int heads, int head_dim, const float* cos, const float* sin);
  void (*attention)(const AttentionJob& job);
  // True when matmul for this weight dtype reads job.xs (x rows repacked by split_x_row) instead of job.x.
  bool (*split_x)(DType wdt);
  // One row of k: per 16-element chunk, the 8 even-index elements then the 8 odd ones; the last chunk
  // zero-padded. out: [SplitXCols(k)]
  void (*split_x_row)(const float* x, int64_t k, float* out);
  // True when matmul for this weight dtype and k reads job.xp (packed x) instead of job.xb.
  bool (*pack_x)(DType wdt, int64_t k);
  // Token block `block` (rows [16 * block, 16 * block + 16) of xb [m, k], zero past m) into the 16 * PackXCols(k)
  // elements at out + block * 16 * PackXCols(k), in the layout this table's matmul reads (AMX: [k / 2][16
  // tokens][2 bf16], the B-tile layout of tdpbf16ps; avx512-bf16: see PackXAvx512Bf16Block).
  void (*pack_x_block)(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out);
  // BF16 weights repacked into pair panels (bf16_pair_panels.h), x packed by PackXPairsBlock into job.xp;
  // nullptr where the table keeps row-major weights (only avx512-bf16 repacks). Also takes int8 weights in
  // the int8 pair-panel layout (job.wdt == kI8, job.scales set).
  void (*matmul_pairs)(const MatmulJob& job, int64_t n_begin, int64_t n_end);
};

inline int64_t SplitXCols(int64_t k) { return (k + 15) / 16 * 16; }
// Row length of packed x: k rounded up to whole 32-element chunks (zero-padded).
inline int64_t PackXCols(int64_t k) { return (k + 31) / 32 * 32; }

const CpuKernels& ScalarKernels();
const CpuKernels& Avx2Kernels();
// with_bf16 selects vdpbf16ps for BF16 weights (x rounded to bf16); requires avx512_bf16.
const CpuKernels& Avx512Kernels(bool with_bf16);
// avx512-bf16 with AMX tiles for BF16 matmuls whose k is a multiple of 32. The caller must hold the
// tile-data permission (kernels::DetectCpuIsa() == CpuIsa::kAmx).
const CpuKernels& AmxKernels();

// kernels_amx.cc
void MatmulAmxBf16(const MatmulJob& job, int64_t n_begin, int64_t n_end);
void PackXAmxBlock(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out);

// matmul_avx512_bf16.cc: the register-tiled vdpbf16ps matmul (AVX-512 without AMX). x packed as
// [ceil(m / kBf16StripTokens) strips][PackXCols(k) / 32 chunks][kBf16StripTokens tokens][32 bf16].
constexpr int kBf16StripTokens = 4;
void MatmulAvx512Bf16Packed(const MatmulJob& job, int64_t n_begin, int64_t n_end);
void PackXAvx512Bf16Block(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out);

// matmul_avx512_bf16_pairs.cc: the weight-stationary vdpbf16ps matmul over pair-panel weights.
void MatmulAvx512Bf16Pairs(const MatmulJob& job, int64_t n_begin, int64_t n_end);
// matmul_int8_pairs_avx512vbmi.cc: the same tiles over kInt8PairBlocks weights; needs AVX512-VBMI.
void MatmulInt8PairsVbmi(const MatmulJob& job, int64_t n_begin, int64_t n_end);

}  // namespace tpserve::kernels::cpu
