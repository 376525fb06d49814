// The compute-backend interface (after ggml's backend interface): one set of ops for the Llama forward
// pass, implemented by the plain reference (kernels/reference), the CPU backend (kernels/cpu, AVX-512 /
// AVX2 with runtime dispatch) and the CUDA backend (kernels/cuda, cuBLAS).
//
// Conventions:
//  - Activations are float32, row-major, in backend memory (host memory for CPU backends, device memory
//    for CUDA). Weights are in backend memory in their stored dtype (F32, BF16 or F16), or int8 quantized at
//    load (kI8, with a float32 scale per output row; backends that say supports_int8_weights()).
//  - Weights use the Hugging Face layout [out_features, in_features]; Matmul computes y = x · Wᵀ.
//  - Batch invariance: the result for one row (token) must be bitwise identical whatever other rows are
//    in the call and whatever the thread count. Greedy output must not change under concurrency.
//  - Ops may run asynchronously (CUDA stream); Download() and Synchronize() wait for them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "kernels/host_top_k.h"

namespace tpserve::kernels {

// How a matmul weight's elements sit in memory. kRowMajor is [rows, cols]; a backend may rearrange a
// weight once at load (Backend::PackMatmulWeight) into a layout only its own Matmul reads.
enum class WeightLayout {
  kRowMajor,
  kBf16PairPanels,  // CPU avx512-bf16: kernels/cpu/bf16_pair_panels.h (same bytes, in place)
  kInt8PairPanels,  // CPU avx512-bf16, kI8 weights: the same layout in bytes; scales stay [rows]
  kInt8PairBlocks,  // CPU avx512-bf16 with AVX512-VBMI, kI8: kInt8PairPanels in sign-magnitude 2-pair blocks
};

// A weight matrix [rows, cols] in backend memory. A 1-D weight (norm) has rows = 1.
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  // kI8 only: [rows] float32 in backend memory; w[r, c] = scales[r] * data[r, c] (symmetric, per output row).
  const float* scales = nullptr;
  WeightLayout layout = WeightLayout::kRowMajor;
};

struct KvCacheSpec {
  int num_layers = 0;
  int num_blocks = 0;
  int block_size = 16;
  int num_kv_heads = 0;  // this worker's KV heads
  int head_dim = 0;
  // Element type asked for: kF32 or kBF16 (the model's choice: bf16 for bf16 models, as vLLM's "auto").
  // The CPU and CUDA backends store what is asked; the reference backend always float32.
  DType dtype = DType::kF32;
};

// A paged KV cache owned by a backend. Per layer, K and V are each
// [num_blocks, block_size, num_kv_heads, head_dim] in the element type of KvCacheSpec::dtype where the
// backend honours it (CPU and CUDA: float32 or bfloat16; reference: always float32).
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const KvCacheSpec& spec() const = 0;
  virtual size_t bytes() const = 0;
};

// Describes one forward step's attention: a batch of sequences, each contributing query tokens
// (a prefill chunk or one decode token). All arrays are in backend memory.
// Token t of sequence s (t in [query_start[s], query_start[s+1])) sits at positions[t] and attends
// causally to cached keys at positions [0, positions[t]].
struct AttentionBatch {
  int num_seqs = 0;
  int num_tokens = 0;
  int max_blocks_per_seq = 0;  // row stride of block_tables
  int max_query_len = 0;
  int max_context_len = 0;
  const int32_t* query_start = nullptr;   // [num_seqs + 1] prefix sums of query tokens
  const int32_t* context_lens = nullptr;  // [num_seqs] cached tokens after this step's writes
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* slot_mapping = nullptr;  // [num_tokens] block * block_size + offset of token t's K/V
  const int32_t* positions = nullptr;     // [num_tokens]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;   // e.g. "reference", "cpu-avx512", "cuda:0 (NVIDIA H100)"
  virtual bool is_host() const = 0;       // pointers are host memory
  virtual void* native_stream() { return nullptr; }  // cudaStream_t for CUDA
  // Whether Matmul takes kI8 weights (reference and CPU: yes; CUDA: not yet, see docs/QUANTIZATION.md).
  virtual bool supports_int8_weights() const { return false; }

  // ---- memory ----
  virtual void* Alloc(size_t bytes) = 0;  // aligned to at least 64 bytes; never nullptr (CHECKs)
  virtual void Free(void* p) = 0;
  virtual void Upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void Download(void* host_dst, const void* src, size_t bytes) = 0;  // waits for prior ops
  virtual void Synchronize() = 0;
  // Free device memory a KV cache could use after weights are loaded (host backends: 0 = unknown).
  virtual size_t FreeMemoryBytes() { return 0; }

  // Once at load, for a weight only Matmul will read: rearranges it in place (same bytes) into a layout this
  // backend's Matmul reads faster and updates w->layout; false (and w unchanged) when the backend keeps
  // row-major. Every op result stays the one the backend's contract gives for row-major weights, within
  // its tolerance, and batch-invariant (each element keeps one fixed operation order for every m).
  virtual bool PackMatmulWeight(WeightView* w) {
    (void)w;
    return false;
  }

  // ---- ops ----
  // y[m, w.rows] = x[m, w.cols] · wᵀ.  kI8: y[:, r] = scales[r] * (x · data[r, :]ᵀ), the scale applied once
  // to each finished dot product (so a row-split rank's partial output is already dequantized).
  virtual void Matmul(const float* x, int64_t m, const WeightView& w, float* y) = 0;

  // out[i, :] = table[ids[i] - vocab_begin, :] when ids[i] is in [vocab_begin, vocab_begin + table.rows),
  // else zeros (the vocab-split embedding; an all-reduce completes it). out: [n, table.cols]
  virtual void Embedding(const int32_t* ids, int64_t n, const WeightView& table, int64_t vocab_begin,
                         float* out) = 0;

  // out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w;  x, out: [rows, w.cols]; may alias.
  virtual void RmsNorm(const float* x, int64_t rows, const WeightView& w, float eps, float* out) = 0;

  // residual += x; out = RmsNorm(residual). residual, x, out: [rows, w.cols]
  virtual void AddRmsNorm(float* residual, const float* x, int64_t rows, const WeightView& w, float eps,
                          float* out) = 0;

  // RoPE in rotate_half order (HF Llama), in place. q: [n, nq * head_dim], k: [n, nk * head_dim].
  // inv_freq[i] = theta^(-2i/head_dim); angle = position * inv_freq[i]; pairs (i, i + head_dim/2).
  virtual void Rope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk,
                    int head_dim, float theta) = 0;

  // out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i];  gate_up: [rows, 2 * inter]
  virtual void SiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out) = 0;

  // out[i, :] = x[rows[i], :]; rows: [n] in backend memory; x: [*, dim]
  virtual void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out) = 0;

  // ---- paged KV cache and attention ----
  virtual absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) = 0;
  // Bytes one block takes across all layers, K and V, for this backend's KV dtype.
  virtual size_t KvBlockBytes(const KvCacheSpec& spec) const = 0;

  // Stores k, v ([num_tokens, nk * head_dim]) at batch.slot_mapping in layer `layer`.
  virtual void WriteKv(KvCache& cache, int layer, const float* k, const float* v,
                       const AttentionBatch& batch) = 0;

  // Rope (positions = batch.positions) then WriteKv, as one op: a backend with a fused kernel (CUDA)
  // rotates q and k in place, stores the rotated k and v, and reads cos / sin from `table` (backend
  // memory from kernels/rope_table.h, built once at load; positions past table_positions are computed).
  // The default runs the two ops; host backends need no table (null, 0).
  virtual void RopeWriteKv(float* q, float* k, const float* v, int nq, int nk, int head_dim, float theta,
                           const float* table, int table_positions, KvCache& cache, int layer,
                           const AttentionBatch& batch) {
    Rope(q, k, batch.positions, batch.num_tokens, nq, nk, head_dim, theta);
    WriteKv(cache, layer, k, v, batch);
  }
  // Whether RopeWriteKv reads a cos / sin table (callers build one only then).
  virtual bool uses_rope_table() const { return false; }

  // Causal GQA attention of q ([num_tokens, nq * head_dim]) over the cache (after WriteKv):
  // head h reads KV head h / (nq / nk). out: [num_tokens, nq * head_dim]. scale = 1/sqrt(head_dim).
  virtual void Attention(const KvCache& cache, int layer, const float* q, const AttentionBatch& batch,
                         int nq, float scale, float* out) = 0;

  // ---- step graphs (CUDA graphs for decode steps) ----
  // A backend that supports graphs records the ops issued between BeginGraph and EndGraph instead of running
  // them (no Upload / Download / Synchronize / Alloc in between), and ReplayGraph runs the recording again
  // with whatever the recorded buffers hold then: the caller keeps per-step inputs in fixed buffers. The
  // defaults say "not supported", so callers run ops directly.
  virtual bool supports_graphs() const { return false; }
  virtual absl::Status BeginGraph() { return absl::UnimplementedError(name() + " does not record graphs"); }
  // The recorded graph's handle (> 0). FAILED_PRECONDITION when an op could not be recorded faithfully
  // (e.g. it needed more scratch than an earlier direct run had grown); nothing is kept then.
  virtual absl::StatusOr<int64_t> EndGraph() { return absl::UnimplementedError(name() + " does not record graphs"); }
  // NOT_FOUND when the backend dropped the graph (it moved a scratch buffer the graph reads): record again.
  virtual absl::Status ReplayGraph(int64_t handle) {
    (void)handle;
    return absl::UnimplementedError(name() + " does not record graphs");
  }
  virtual void ReleaseGraph(int64_t handle) { (void)handle; }

  // ---- sampling support ----
  // The k most likely ids of each logits row, so a step can bring back ids, their logits and each row's
  // log-sum-exp instead of whole rows (HostTopK in kernels/host_top_k.h has the layout and rules).
  // All pointers in backend memory; 1 <= k <= 32 (kernels/cuda: kMaxTopK). Host backends use HostTopK;
  // the CUDA backend a kernel (its lse summed in float32, in a fixed order).
  virtual void TopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k,
                    int32_t* ids, float* values, float* lse) {
    HostTopK(logits, rows, parts, part_len, vocab, k, ids, values, lse);
  }
};

// ---- factories ----

// The plain reference: simple loops, float32 math (float64 accumulators where cheap), single thread.
std::unique_ptr<Backend> CreateReferenceBackend();

// kAmx: AVX-512 with avx512_bf16, plus AMX-BF16 tiles for BF16 matmuls (Sapphire Rapids and later).
enum class CpuIsa { kAuto, kAmx, kAvx512, kAvx2, kScalar };
struct CpuBackendOptions {
  int threads = 0;            // 0 => std::thread::hardware_concurrency()
  CpuIsa isa = CpuIsa::kAuto;  // tests force kAvx512 / kAvx2 / kScalar to cover every path
  // int8 weights on avx512-bf16 CPUs that have AVX512-VBMI take its cheaper widening (kInt8PairBlocks);
  // false keeps the layout of CPUs without it (tests cover both paths on one machine).
  bool int8_vbmi = true;
};
// Fails (INVALID_ARGUMENT) when the requested ISA is not supported by this CPU.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options);
const char* CpuIsaName(CpuIsa isa);
// Best ISA this machine supports. kAmx only once Linux granted this process the AMX tile state
// (arch_prctl ARCH_REQ_XCOMP_PERM, requested here on the first call).
CpuIsa DetectCpuIsa();
// Parses "auto", "amx", "avx512", "avx2" or "scalar" (the --cpu-isa values); false on anything else.
bool ParseCpuIsa(const std::string& s, CpuIsa* isa);

// CUDA device `device`. UNAVAILABLE when built without CUDA or when no driver/device is present.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device);
// Number of usable CUDA devices (0 without CUDA build, driver or GPU). Never crashes.
int CudaDeviceCount();

}  // namespace tpserve::kernels
