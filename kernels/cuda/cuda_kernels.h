// Host-side launchers for the CUDA kernels (one .cu file per op family). All pointers are device
// memory; every launcher enqueues on `stream` and returns without synchronizing. Shapes are in the
// comments; callers (cuda_backend.cc) validate them. Weight dtypes are passed as int(tpserve::DType)
// (0 f32, 1 bf16, 2 f16) so that nvcc never parses Abseil headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tpserve::kernels::cuda {

// ---- elementwise_kernels.cu ----
// out[i, :] = table[ids[i] - vocab_begin, :] or zeros. table: [vocab_rows, dim], out: [n, dim]
void LaunchEmbedding(const int32_t* ids, int64_t n, const void* table, int dtype, int64_t vocab_rows,
                     int64_t dim, int64_t vocab_begin, float* out, cudaStream_t stream);
// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]
void LaunchSiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out, cudaStream_t stream);
// out[i, :] = x[rows[i], :]
void LaunchGatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                      cudaStream_t stream);
// In-place rotate_half RoPE. q: [n, nq * head_dim], k: [n, nk * head_dim]
void LaunchRope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk, int head_dim,
                float theta, cudaStream_t stream);
// dst[i] = round_to_nearest_even(src[i]) in bf16 (dtype kBF16) or f16 (kF16), i < n
void LaunchConvertF32(const float* src, int64_t n, int dtype, void* dst, cudaStream_t stream);

// ---- norm_kernels.cu ----
// One block per row. x, out: [rows, cols]; w: [cols] in `w_dtype`. x and out may alias.
void LaunchRmsNorm(const float* x, int64_t rows, int64_t cols, const void* w, int w_dtype, float eps,
                   float* out, cudaStream_t stream);
// residual += x; out = RmsNorm(residual).
void LaunchAddRmsNorm(float* residual, const float* x, int64_t rows, int64_t cols, const void* w,
                      int w_dtype, float eps, float* out, cudaStream_t stream);

// ---- gemv_kernels.cu ----
// Rows handled by the memory-bound GEMV (decode); larger m goes to cuBLAS.
constexpr int64_t kGemvMaxRows = 8;
// y[m, n] = x[m, k] · w[n, k]ᵀ for 16-bit weights (kBF16 / kF16), fp32 x, fp32 accumulation,
// 1 <= m <= kGemvMaxRows. Each output row is computed in the same order whatever m is.
void LaunchGemv16(const float* x, int64_t m, const void* w, int dtype, int64_t n, int64_t k, float* y,
                  cudaStream_t stream);

// ---- gemv_int8_kernels.cu ----
// y[m, n] = scales[n] * (x[m, k] · w[n, k]ᵀ) for int8 weights (--quantization int8), fp32 x and accumulation,
// 1 <= m <= kGemvMaxRows; each output row in the same order whatever m is. Larger m: the backend runs it
// kGemvMaxRows tokens at a time (a fallback that re-reads the weights per 8 tokens; docs/QUANTIZATION.md).
void LaunchGemvInt8(const float* x, int64_t m, const int8_t* w, const float* scales, int64_t n, int64_t k,
                    float* y, cudaStream_t stream);

// ---- topk_kernels.cu ----
// Most candidates a TopK call returns: the sampler's top logprobs (kMaxLogprobs = 20) plus the chosen token.
constexpr int kMaxTopK = 32;
// For each row r of logits laid out as `parts` x [rows, part_len] (the TP all-gather layout; parts = 1 for
// one rank) with ids >= vocab as padding: ids/values [rows, k] the k largest logits, descending, ties ->
// lower id, NaN as -inf; lse [rows] = log(sum(exp(logits[r, :]))) (-inf when no entry is finite).
// 1 <= k <= min(kMaxTopK, vocab). k = 1 is greedy argmax.
void LaunchTopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k,
                int32_t* ids, float* values, float* lse, cudaStream_t stream);

// ---- kv_cache_kernels.cu ----
// k, v: [num_tokens, nk * head_dim] fp32 -> k_cache, v_cache: [num_blocks, block_size, nk, head_dim]
// in `kv_dtype` (kF32 stored as is, kBF16 rounded to nearest even) at slot_mapping[t] (flat
// block * block_size + offset); negative slots are skipped (padding).
// RoPE from a cos/sin table fused with the KV write (rope_kv_kernels.cu): q, k rotated in place, then
// rotated k and v stored at slot_mapping[t] (slot < 0: not stored). A position outside
// [0, table_positions) is computed in the kernel instead (same numbers, slower).
struct RopeWriteKvParams {
  float* q = nullptr;                     // [num_tokens, nq * head_dim]
  float* k = nullptr;                     // [num_tokens, nk * head_dim]
  const float* v = nullptr;               // [num_tokens, nk * head_dim]
  const int32_t* positions = nullptr;     // [num_tokens]
  const int32_t* slot_mapping = nullptr;  // [num_tokens]
  int64_t num_tokens = 0;
  int nq = 0;
  int nk = 0;
  int head_dim = 0;
  float theta = 10000.0f;
  const float* cos_sin = nullptr;  // [table_positions, head_dim / 2, 2] from kernels/rope_table.h
  int table_positions = 0;
  int kv_dtype = 1;  // int(DType) of the cache: 0 float32, 1 bf16
  void* k_cache = nullptr;  // this layer's [num_slots, nk * head_dim]
  void* v_cache = nullptr;
};
void LaunchRopeWriteKv(const RopeWriteKvParams& p, cudaStream_t stream);

void LaunchWriteKv(const float* k, const float* v, const int32_t* slot_mapping, int64_t num_tokens,
                   int64_t kv_width, int kv_dtype, void* k_cache, void* v_cache, cudaStream_t stream);

// ---- attention_kernels.cu ----
struct PagedAttentionParams {
  const float* q = nullptr;              // [num_tokens, nq * head_dim]
  float* out = nullptr;                  // [num_tokens, nq * head_dim]
  const void* k_cache = nullptr;         // [num_blocks, block_size, nk, head_dim] in kv_dtype
  const void* v_cache = nullptr;
  int kv_dtype = 1;                      // int(DType): 0 float32, 1 bf16 (the model's choice)
  const int32_t* query_start = nullptr;  // [num_seqs + 1]
  const int32_t* block_tables = nullptr; // [num_seqs, max_blocks_per_seq]
  const int32_t* positions = nullptr;    // [num_tokens]
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  int max_query_len = 0;
  int max_context_len = 0;
  int nq = 0;
  int nk = 0;
  int head_dim = 0;  // <= kMaxHeadDim
  int block_size = 0;
  float scale = 1.0f;
  // Decode split-K scratch, at least DecodeScratchFloats() floats (may be null when that is 0).
  float* scratch = nullptr;
};
constexpr int kMaxHeadDim = 256;
// Keys per decode split: fixed (not derived from the batch) so a decode token's result depends
// only on its own context, never on which other sequences share the step.
constexpr int kDecodeSplitKeys = 256;
int64_t DecodeScratchFloats(const PagedAttentionParams& p);
// Prefill chunks (query_len > 1): tiled flash attention with online softmax. Decode tokens
// (query_len == 1): split-K over kDecodeSplitKeys-key chunks, then a combine pass.
void LaunchPagedAttention(const PagedAttentionParams& p, cudaStream_t stream);
// Prefill chunks on tensor cores (prefill_attention_mma.cu): bf16 caches with head_dim % 16 == 0 and
// <= 256. LaunchPagedAttention picks it; other caches keep the fp32 CUDA-core prefill kernel.
bool PrefillAttentionUsesMma(const PagedAttentionParams& p);
void LaunchPrefillAttentionMma(const PagedAttentionParams& p, cudaStream_t stream);
// Raises the dynamic shared-memory limit of the prefill kernel; call once per device.
cudaError_t ConfigureAttentionKernels();

}  // namespace tpserve::kernels::cuda
