// The CUDA backend: device memory, one stream, one cuBLAS handle, and the op dispatch onto the kernels
// in kernels/cuda/*.cu. Factories never abort without a driver or GPU: they report UNAVAILABLE.
//
// The KV cache stores what KvCacheSpec::dtype asks (the model's choice, LlamaModel::KvDType): float32
// for float32 models, so their greedy references are exact, and bf16 for bf16 models.
//
// Batch invariance on the GPU: RMSNorm, RoPE, attention and the small-m GEMV compute each row in an
// order that depends only on that row. The exception is Matmul with m > kGemvMaxRows (and every F32
// Matmul): cuBLAS chooses its algorithm (tile shape, split-K) by m, so a row's logits can differ in
// the last bits between a step with <= 8 rows and one with more. Greedy decoding is exactly
// reproducible for a fixed batch composition; across compositions it can flip only on near-ties.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace tpserve::kernels {
namespace cuda {

const char* CublasStatusName(cublasStatus_t s) { return cublasGetStatusString(s); }

namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;  // cuBLAS recommends >= 32 MiB on Hopper

// K and V of every layer in one allocation: layer l's K is block [2l], its V block [2l + 1],
// each [num_blocks, block_size, num_kv_heads, head_dim] in spec.dtype (float32 or bf16).
class CudaKvCache : public KvCache {
 public:
  CudaKvCache(const KvCacheSpec& spec, int device, char* base, size_t bytes)
      : spec_(spec), device_(device), base_(base), bytes_(bytes) {}
  ~CudaKvCache() override {
    cudaSetDevice(device_);
    cudaError_t e = cudaFree(base_);
    if (e != cudaSuccess) TP_LOG(ERROR) << CudaErrorText("cudaFree(kv cache)", e);
  }
  const KvCacheSpec& spec() const override { return spec_; }
  size_t bytes() const override { return bytes_; }

  int64_t layer_bytes() const {
    return static_cast<int64_t>(spec_.num_blocks) * spec_.block_size * spec_.num_kv_heads * spec_.head_dim *
           static_cast<int64_t>(DTypeSize(spec_.dtype));
  }
  void* k(int layer) const { return base_ + (2 * static_cast<int64_t>(layer)) * layer_bytes(); }
  void* v(int layer) const { return base_ + (2 * static_cast<int64_t>(layer) + 1) * layer_bytes(); }

 private:
  KvCacheSpec spec_;
  int device_;
  char* base_;
  size_t bytes_;
};

// A device buffer that grows on demand, mid-step. Stream-ordered (cudaFreeAsync / cudaMallocAsync on the
// backend's stream): kernels still reading the old buffer finish before it is reused, and nothing
// synchronizes the device. A cudaFree / cudaMalloc here could wait on a peer GPU's NCCL kernel that waits
// for this rank, a deadlock when several ranks share a process (engine-bench, tests).
//
// Graphs (CudaBackend::BeginGraph) bake the buffer's address in: while recording, a request that would grow
// it marks the recording broken instead (the graph is never kept, so the short buffer is never used), and a
// growth outside recording calls `on_move` so that the backend drops the graphs that read the old buffer.
class Scratch {
 public:
  Scratch(cudaStream_t* stream, const bool* recording, bool* broken, std::function<void()> on_move)
      : stream_(stream), recording_(recording), broken_(broken), on_move_(std::move(on_move)) {}
  ~Scratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, *stream_);
  }
  void* Get(size_t bytes) {
    if (bytes <= capacity_ && ptr_ != nullptr) return ptr_;
    if (*recording_) {
      *broken_ = true;
      return ptr_;
    }
    on_move_();
    const size_t want = std::max(bytes, capacity_ * 2);
    if (ptr_ != nullptr) {
      TP_CUDA_CHECK(cudaFreeAsync(ptr_, *stream_));
      ptr_ = nullptr;
      capacity_ = 0;
    }
    TP_CUDA_CHECK(cudaMallocAsync(&ptr_, want, *stream_));
    capacity_ = want;
    return ptr_;
  }

 private:
  cudaStream_t* stream_;  // the backend's, created after this object
  const bool* recording_;
  bool* broken_;
  std::function<void()> on_move_;
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

// Pinned host memory that device-to-host copies land in (DMA, no pageable staging); grows on demand.
class PinnedStaging {
 public:
  ~PinnedStaging() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  size_t capacity() const { return capacity_; }
  // Call with the stream idle when bytes > capacity(): freeing pinned memory synchronizes.
  void* Get(size_t bytes) {
    if (bytes <= capacity_ && ptr_ != nullptr) return ptr_;
    const size_t want = std::max({bytes, capacity_ * 2, size_t{1} << 20});
    if (ptr_ != nullptr) TP_CUDA_CHECK(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    capacity_ = 0;
    TP_CUDA_CHECK(cudaHostAlloc(&ptr_, want, cudaHostAllocDefault));
    capacity_ = want;
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

int DevDType(DType t) { return static_cast<int>(t); }

// Thread-compatible: one thread drives a backend at a time (the worker's forward pass).
class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(int device) {
    auto b = std::unique_ptr<CudaBackend>(new CudaBackend(device));
    TP_RETURN_IF_ERROR(b->Init());
    return std::unique_ptr<Backend>(std::move(b));
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    DropGraphs();
    if (upload_done_ != nullptr) cudaEventDestroy(upload_done_);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (workspace_ != nullptr) cudaFree(workspace_);
    x16_.reset();
    attn_scratch_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  bool is_host() const override { return false; }
  bool supports_int8_weights() const override { return true; }
  void* native_stream() override { return stream_; }

  void* Alloc(size_t bytes) override {
    Bind();
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    TP_CHECK(e == cudaSuccess && p != nullptr)
        << CudaErrorText("cudaMalloc", e) << " for " << bytes << " bytes on " << name_;
    return p;
  }
  void Free(void* p) override {
    if (p == nullptr) return;
    Bind();
    // cudaFree synchronizes the device, so no op still reads p.
    TP_CUDA_CHECK(cudaFree(p));
  }
  void Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    Bind();
    if (bytes > kMaxStagedUploadBytes) {
      // Weights at load time. Pageable sources are staged before cudaMemcpyAsync returns, so the caller may reuse them.
      TP_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
      return;
    }
    // Step inputs (ids, positions, block tables): copied into pinned memory and sent as one DMA, so the
    // caller returns at once and the copy never waits on a pageable staging buffer. The pinned buffer is
    // reused once the previous upload from it has finished (an event, usually long done).
    TP_CUDA_CHECK(cudaEventSynchronize(upload_done_));
    if (bytes > upload_staging_.capacity()) TP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    void* staged = upload_staging_.Get(bytes);
    std::memcpy(staged, host_src, bytes);
    TP_CUDA_CHECK(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, stream_));
    TP_CUDA_CHECK(cudaEventRecord(upload_done_, stream_));
  }
  void Download(void* host_dst, const void* src, size_t bytes) override {
    Bind();
    if (bytes == 0 || bytes > kMaxStagedBytes) {
      if (bytes > 0) TP_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
      TP_CUDA_CHECK(cudaStreamSynchronize(stream_));
      return;
    }
    // Logits and other step outputs: through pinned memory, so the copy is one DMA after the stream's
    // work and never a pageable staging copy that other GPUs' work can hold up.
    if (bytes > staging_.capacity()) TP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    void* staged = staging_.Get(bytes);
    TP_CUDA_CHECK(cudaMemcpyAsync(staged, src, bytes, cudaMemcpyDeviceToHost, stream_));
    TP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(host_dst, staged, bytes);
  }
  void Synchronize() override {
    Bind();
    TP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  size_t FreeMemoryBytes() override {
    Bind();
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 0;
    return free_bytes;
  }

  void Matmul(const float* x, int64_t m, const WeightView& w, float* y) override {
    if (m <= 0 || w.rows <= 0) return;
    Bind();
    if (w.cols == 0) {
      TP_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * m * w.rows, stream_));
      return;
    }
    TP_CHECK(m <= INT_MAX && w.rows <= INT_MAX && w.cols <= INT_MAX)
        << "Matmul shape [" << m << ", " << w.cols << "] x [" << w.rows << ", " << w.cols << "]ᵀ exceeds int";
    if (w.dtype == DType::kI8) {
      // int8 weights (--quantization int8): the W8 GEMV, kGemvMaxRows tokens per launch. For larger m this
      // re-reads the weights once per 8 tokens: a correct, batch-invariant fallback, not a fast prefill
      // (a dequantize-to-bf16 + cuBLAS or int8 tensor-core GEMM is the next step; docs/QUANTIZATION.md).
      for (int64_t t = 0; t < m; t += cuda::kGemvMaxRows) {
        const int64_t mt = std::min<int64_t>(cuda::kGemvMaxRows, m - t);
        cuda::LaunchGemvInt8(x + t * w.cols, mt, static_cast<const int8_t*>(w.data), w.scales, w.rows, w.cols,
                             y + t * w.rows, stream_);
      }
      return;
    }
    const int mi = static_cast<int>(m), n = static_cast<int>(w.rows), k = static_cast<int>(w.cols);
    const float alpha = 1.0f, beta = 0.0f;
    // Row-major y[m, n] = x[m, k] · W[n, k]ᵀ is column-major yᵀ[n, m] = W(col-major [k, n])ᵀ · xᵀ[k, m].
    if (w.dtype == DType::kF32) {
      TP_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, mi, k, &alpha,
                                  static_cast<const float*>(w.data), k, x, k, &beta, y, n));
      return;
    }
    if (m <= cuda::kGemvMaxRows) {
      cuda::LaunchGemv16(x, m, w.data, DevDType(w.dtype), w.rows, w.cols, y, stream_);
      return;
    }
    // Tensor cores: x rounded to the weight's 16-bit type, fp32 accumulation and output.
    const cudaDataType_t t16 = w.dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
    void* x16 = x16_->Get(sizeof(uint16_t) * m * w.cols);
    cuda::LaunchConvertF32(x, m * w.cols, DevDType(w.dtype), x16, stream_);
    TP_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, mi, k, &alpha, w.data, t16, k, x16, t16,
                                 k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void Embedding(const int32_t* ids, int64_t n, const WeightView& table, int64_t vocab_begin,
                 float* out) override {
    Bind();
    cuda::LaunchEmbedding(ids, n, table.data, DevDType(table.dtype), table.rows, table.cols, vocab_begin, out,
                          stream_);
  }

  void RmsNorm(const float* x, int64_t rows, const WeightView& w, float eps, float* out) override {
    Bind();
    cuda::LaunchRmsNorm(x, rows, w.cols, w.data, DevDType(w.dtype), eps, out, stream_);
  }

  void AddRmsNorm(float* residual, const float* x, int64_t rows, const WeightView& w, float eps,
                  float* out) override {
    Bind();
    cuda::LaunchAddRmsNorm(residual, x, rows, w.cols, w.data, DevDType(w.dtype), eps, out, stream_);
  }

  void Rope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk, int head_dim,
            float theta) override {
    TP_CHECK(head_dim % 2 == 0) << "RoPE head_dim " << head_dim << " is odd";
    Bind();
    cuda::LaunchRope(q, k, positions, n, nq, nk, head_dim, theta, stream_);
  }

  void SiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out) override {
    Bind();
    cuda::LaunchSiluMul(gate_up, rows, inter, out, stream_);
  }

  void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out) override {
    Bind();
    cuda::LaunchGatherRows(x, rows, n, dim, out, stream_);
  }

  bool supports_graphs() const override { return true; }

  absl::Status BeginGraph() override {
    if (recording_) return absl::FailedPreconditionError("BeginGraph while a graph is being recorded");
    Bind();
    // Thread-local mode: other threads' (other ranks') CUDA calls are not captured and not refused.
    TP_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    recording_ = true;
    recording_broken_ = false;
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> EndGraph() override {
    if (!recording_) return absl::FailedPreconditionError("EndGraph without BeginGraph");
    Bind();
    recording_ = false;
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    if (e != cudaSuccess || graph == nullptr) {
      cudaGetLastError();
      return CudaStatus("cudaStreamEndCapture", e);
    }
    if (recording_broken_) {
      cudaGraphDestroy(graph);
      return absl::FailedPreconditionError(
          "a recorded op needed a larger scratch buffer than the direct run before it had grown");
    }
    cudaGraphExec_t exec = nullptr;
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return CudaStatus("cudaGraphInstantiate", e);
    }
    const int64_t handle = next_graph_++;
    graphs_.emplace(handle, exec);
    return handle;
  }

  absl::Status ReplayGraph(int64_t handle) override {
    auto it = graphs_.find(handle);
    if (it == graphs_.end()) {
      return absl::NotFoundError(absl::StrCat("graph ", handle, " was dropped (a scratch buffer it reads moved)"));
    }
    Bind();
    TP_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
    return absl::OkStatus();
  }

  void ReleaseGraph(int64_t handle) override {
    auto it = graphs_.find(handle);
    if (it == graphs_.end()) return;
    Bind();
    cudaGraphExecDestroy(it->second);
    graphs_.erase(it);
  }

  void TopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k, int32_t* ids,
            float* values, float* lse) override {
    Bind();
    cuda::LaunchTopK(logits, rows, parts, part_len, vocab, k, ids, values, lse, stream_);
  }

  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) override {
    TP_RETURN_IF_ERROR(ValidateSpec(spec));
    Bind();
    const size_t bytes = KvBlockBytes(spec) * static_cast<size_t>(spec.num_blocks);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      return absl::ResourceExhaustedError(absl::StrCat("KV cache of ", spec.num_blocks, " blocks (", bytes,
                                                       " bytes) does not fit on ", name_, ": ",
                                                       CudaErrorText("cudaMalloc", e)));
    }
    // Zeroed so that a stale block table can never feed NaN bit patterns into attention.
    e = cudaMemsetAsync(p, 0, bytes, stream_);
    if (e != cudaSuccess) {
      cudaFree(p);
      return CudaStatus("cudaMemsetAsync(kv cache)", e);
    }
    return std::unique_ptr<KvCache>(new CudaKvCache(spec, device_, static_cast<char*>(p), bytes));
  }

  size_t KvBlockBytes(const KvCacheSpec& spec) const override {
    return static_cast<size_t>(spec.num_layers) * 2 * spec.block_size * spec.num_kv_heads * spec.head_dim *
           DTypeSize(spec.dtype);
  }

  void WriteKv(KvCache& cache, int layer, const float* k, const float* v, const AttentionBatch& batch) override {
    auto& c = static_cast<CudaKvCache&>(cache);
    const KvCacheSpec& s = c.spec();
    TP_CHECK(layer >= 0 && layer < s.num_layers) << "layer " << layer;
    Bind();
    cuda::LaunchWriteKv(k, v, batch.slot_mapping, batch.num_tokens,
                        static_cast<int64_t>(s.num_kv_heads) * s.head_dim, DevDType(s.dtype), c.k(layer), c.v(layer),
                        stream_);
  }

  void RopeWriteKv(float* q, float* k, const float* v, int nq, int nk, int head_dim, float theta, const float* table,
                   int table_positions, KvCache& cache, int layer, const AttentionBatch& batch) override {
    auto& c = static_cast<CudaKvCache&>(cache);
    const KvCacheSpec& s = c.spec();
    TP_CHECK(layer >= 0 && layer < s.num_layers) << "layer " << layer;
    TP_CHECK(head_dim % 2 == 0 && nk == s.num_kv_heads && head_dim == s.head_dim)
        << "RoPE head_dim " << head_dim << " nk " << nk << " vs cache " << s.num_kv_heads << " x " << s.head_dim;
    Bind();
    cuda::RopeWriteKvParams p;
    p.q = q;
    p.k = k;
    p.v = v;
    p.positions = batch.positions;
    p.slot_mapping = batch.slot_mapping;
    p.num_tokens = batch.num_tokens;
    p.nq = nq;
    p.nk = nk;
    p.head_dim = head_dim;
    p.theta = theta;
    p.cos_sin = table;
    p.table_positions = table != nullptr ? table_positions : 0;
    p.kv_dtype = DevDType(s.dtype);
    p.k_cache = c.k(layer);
    p.v_cache = c.v(layer);
    cuda::LaunchRopeWriteKv(p, stream_);
  }
  bool uses_rope_table() const override { return true; }

  void Attention(const KvCache& cache, int layer, const float* q, const AttentionBatch& batch, int nq,
                 float scale, float* out) override {
    const auto& c = static_cast<const CudaKvCache&>(cache);
    const KvCacheSpec& s = c.spec();
    TP_CHECK(layer >= 0 && layer < s.num_layers) << "layer " << layer;
    Bind();
    cuda::PagedAttentionParams p;
    p.q = q;
    p.out = out;
    p.k_cache = c.k(layer);
    p.v_cache = c.v(layer);
    p.kv_dtype = DevDType(s.dtype);
    p.query_start = batch.query_start;
    p.block_tables = batch.block_tables;
    p.positions = batch.positions;
    p.num_seqs = batch.num_seqs;
    p.max_blocks_per_seq = batch.max_blocks_per_seq;
    p.max_query_len = batch.max_query_len;
    p.max_context_len = batch.max_context_len;
    p.nq = nq;
    p.nk = s.num_kv_heads;
    p.head_dim = s.head_dim;
    p.block_size = s.block_size;
    p.scale = scale;
    const int64_t scratch_floats = cuda::DecodeScratchFloats(p);
    if (scratch_floats > 0) {
      p.scratch = static_cast<float*>(attn_scratch_->Get(sizeof(float) * scratch_floats));
    }
    cuda::LaunchPagedAttention(p, stream_);
  }

 private:
  explicit CudaBackend(int device)
      : device_(device),
        x16_(std::make_unique<Scratch>(&stream_, &recording_, &recording_broken_, [this] { DropGraphs(); })),
        attn_scratch_(std::make_unique<Scratch>(&stream_, &recording_, &recording_broken_, [this] { DropGraphs(); })) {}

  // Graphs that read a scratch buffer about to move: every graph (they all may). Their owners see NOT_FOUND on
  // the next ReplayGraph and record again.
  void DropGraphs() {
    for (auto& [handle, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  absl::Status Init() {
    TP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    cudaDeviceProp prop;
    TP_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device_));
    name_ = absl::StrCat("cuda:", device_, " (", prop.name, ")");
    if (prop.major < 8) {
      return absl::UnavailableError(absl::StrCat(name_, " has compute capability ", prop.major, ".", prop.minor,
                                                 "; the CUDA backend needs 8.0+ (bf16)"));
    }
    TP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming));
    cublasStatus_t st = cublasCreate(&cublas_);
    if (st != CUBLAS_STATUS_SUCCESS) {
      cublas_ = nullptr;
      return absl::UnavailableError(absl::StrCat("cublasCreate on ", name_, ": ", CublasStatusName(st)));
    }
    TP_CUDA_RETURN_IF_ERROR(cudaMalloc(&workspace_, kCublasWorkspaceBytes));
    for (cublasStatus_t s : {cublasSetStream(cublas_, stream_),
                             cublasSetWorkspace(cublas_, workspace_, kCublasWorkspaceBytes),
                             // No TF32 for F32 weights: they exist for exactness tests.
                             cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH)}) {
      if (s != CUBLAS_STATUS_SUCCESS) {
        return absl::InternalError(absl::StrCat("cuBLAS setup on ", name_, ": ", CublasStatusName(s)));
      }
    }
    TP_CUDA_RETURN_IF_ERROR(cuda::ConfigureAttentionKernels());
    return absl::OkStatus();
  }

  static absl::Status ValidateSpec(const KvCacheSpec& s) {
    if (s.num_layers <= 0 || s.num_blocks <= 0 || s.block_size <= 0 || s.num_kv_heads <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KvCacheSpec needs positive num_layers, num_blocks, block_size and num_kv_heads; got ", s.num_layers,
          ", ", s.num_blocks, ", ", s.block_size, ", ", s.num_kv_heads));
    }
    if (s.head_dim <= 0 || s.head_dim > cuda::kMaxHeadDim) {
      return absl::InvalidArgumentError(absl::StrCat("KvCacheSpec.head_dim ", s.head_dim,
                                                     " is outside the CUDA attention kernels' range [1, ",
                                                     cuda::kMaxHeadDim, "]"));
    }
    if (s.dtype != DType::kF32 && s.dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("the CUDA KV cache holds float32 or bfloat16, not ", DTypeName(s.dtype)));
    }
    return absl::OkStatus();
  }

  // Ops may be called from a thread whose current device is another backend's.
  void Bind() { TP_CUDA_CHECK(cudaSetDevice(device_)); }

  int device_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* workspace_ = nullptr;
  std::unique_ptr<Scratch> x16_;           // x rounded to 16 bits for cuBLAS, [m, k]
  std::unique_ptr<Scratch> attn_scratch_;  // decode split-K partials
  PinnedStaging staging_;                  // Download's landing buffer
  PinnedStaging upload_staging_;           // Upload's source buffer
  cudaEvent_t upload_done_ = nullptr;      // after the latest copy out of upload_staging_
  bool recording_ = false;                 // between BeginGraph and EndGraph
  bool recording_broken_ = false;          // a scratch buffer wanted to grow while recording
  std::map<int64_t, cudaGraphExec_t> graphs_;
  int64_t next_graph_ = 1;
  static constexpr size_t kMaxStagedBytes = size_t{256} << 20;  // larger downloads go direct
  static constexpr size_t kMaxStagedUploadBytes = size_t{16} << 20;  // step inputs; weights go direct
};

}  // namespace
}  // namespace cuda

int CudaDeviceCount() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it so later runtime calls do not report it again
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA driver or GPU: ", cuda::CudaErrorText("cudaGetDeviceCount", e)));
  }
  if (n == 0) return absl::UnavailableError("no CUDA GPU is visible (cudaGetDeviceCount == 0)");
  if (device < 0 || device >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist; this machine has devices 0..", n - 1));
  }
  return cuda::CudaBackend::Create(device);
}

}  // namespace tpserve::kernels
