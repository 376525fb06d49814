// Loads or generates one rank's weight shards into backend memory (see weights.h).
#include "worker/model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace tpserve::model {
namespace {

bool IsNorm(LocalWeight k) {
  return k == LocalWeight::kInputNorm || k == LocalWeight::kPostNorm || k == LocalWeight::kFinalNorm;
}

// The per-layer matrices --quantization converts (embedding and lm_head are separate choices).
bool IsProjection(LocalWeight k) {
  return k == LocalWeight::kQkv || k == LocalWeight::kOProj || k == LocalWeight::kGateUp || k == LocalWeight::kDown;
}

// Weights that only Matmul reads (the embedding is also read row by row, so it stays row-major, and so
// does a tied lm_head, which is the same buffer).
bool MatmulOnly(LocalWeight k) {
  return k == LocalWeight::kQkv || k == LocalWeight::kOProj || k == LocalWeight::kGateUp ||
         k == LocalWeight::kDown || k == LocalWeight::kLmHead;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Converts n floats to `dtype` into dst.
void FromF32(const float* src, size_t n, DType dtype, void* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = F32ToBF16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = F32ToF16(src[i]);
      return;
    }
    case DType::kI8: break;  // Random() refuses it
  }
  TP_CHECK(false) << "FromF32: no conversion to " << DTypeName(dtype);
}

}  // namespace

LlamaWeights::~LlamaWeights() {
  for (void* p : allocations_) backend_->Free(p);
  for (float* p : scales_) {
    if (p != nullptr) backend_->Free(p);
  }
}

void LlamaWeights::Allocate(const std::vector<DType>& dtypes) {
  const std::vector<LocalBuffer>& bufs = spec_.buffers();
  views_.resize(bufs.size());
  scales_.assign(bufs.size(), nullptr);
  for (size_t i = 0; i < bufs.size(); ++i) {
    const size_t bytes = static_cast<size_t>(bufs[i].rows * bufs[i].cols) * DTypeSize(dtypes[i]);
    void* p = backend_->Alloc(std::max<size_t>(bytes, 64));
    allocations_.push_back(p);
    bytes_ += bytes;
    views_[i] = kernels::WeightView{p, dtypes[i], bufs[i].rows, bufs[i].cols};
    if (dtypes[i] == DType::kI8) {
      // Zero scales: vocab padding rows (never written) then yield exact zeros.
      const size_t scale_bytes = static_cast<size_t>(bufs[i].rows) * sizeof(float);
      scales_[i] = static_cast<float*>(backend_->Alloc(std::max<size_t>(scale_bytes, 64)));
      const std::vector<float> zeros(static_cast<size_t>(bufs[i].rows), 0.0f);
      backend_->Upload(scales_[i], zeros.data(), scale_bytes);
      bytes_ += scale_bytes;
      views_[i].scales = scales_[i];
    }
  }
  BindViews();
}

void LlamaWeights::BindViews() {
  const ModelConfig& c = spec_.config();
  layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = layers_[l];
    w.input_norm = views_[spec_.BufferIndex(LocalWeight::kInputNorm, l)];
    w.qkv = views_[spec_.BufferIndex(LocalWeight::kQkv, l)];
    w.o_proj = views_[spec_.BufferIndex(LocalWeight::kOProj, l)];
    w.post_norm = views_[spec_.BufferIndex(LocalWeight::kPostNorm, l)];
    w.gate_up = views_[spec_.BufferIndex(LocalWeight::kGateUp, l)];
    w.down = views_[spec_.BufferIndex(LocalWeight::kDown, l)];
  }
  embed_ = views_[spec_.BufferIndex(LocalWeight::kEmbed)];
  final_norm_ = views_[spec_.BufferIndex(LocalWeight::kFinalNorm)];
  const int lm = spec_.BufferIndex(LocalWeight::kLmHead);
  lm_head_ = lm >= 0 ? views_[lm] : embed_;  // tied embeddings share the vocab slice
}

void LlamaWeights::PackForMatmul() {
  const std::vector<LocalBuffer>& bufs = spec_.buffers();
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (MatmulOnly(bufs[i].kind)) backend_->PackMatmulWeight(&views_[i]);
  }
  BindViews();
}

void LlamaWeights::Write(int index, size_t offset, const void* host, size_t bytes) {
  uint8_t* dst = static_cast<uint8_t*>(allocations_[index]) + offset;
  if (backend_->is_host()) {
    std::memcpy(dst, host, bytes);
  } else {
    backend_->Upload(dst, host, bytes);
  }
}

absl::Status LlamaWeights::LoadInt8(const checkpoint::Checkpoint& ckpt, const WeightSlice& w) {
  const kernels::WeightView& v = views_[w.buffer];
  if (w.full_shape.size() != 2) return absl::InternalError(absl::StrCat(w.name, ": int8 needs a matrix"));
  const int64_t full_cols = w.full_shape[1];
  // Checkpoint rows [row0, row0 + rows) are read whole (the scale is the whole row's, quantization.h);
  // columns [c0, c1) of them are kept.
  const bool row_split = w.dim == 1;
  const int64_t row0 = row_split ? 0 : w.begin;
  const int64_t rows = w.local_rows();
  const int64_t c0 = row_split ? w.begin : 0, c1 = row_split ? w.end : full_cols;
  if (c1 - c0 != v.cols) return absl::InternalError(absl::StrCat(w.name, ": slice width does not match its buffer"));
  const int64_t chunk = std::max<int64_t>(1, (int64_t{4} << 20) / std::max<int64_t>(full_cols, 1));
  std::vector<float> staging;
  std::vector<int8_t> q;
  std::vector<float> scales;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t nr = std::min(chunk, rows - r);
    staging.resize(static_cast<size_t>(nr * full_cols));
    TP_RETURN_IF_ERROR(ckpt.ReadSlice(w.name, w.full_shape, 0, row0 + r, row0 + r + nr, DType::kF32, staging.data()));
    q.resize(static_cast<size_t>(nr * v.cols));
    scales.resize(static_cast<size_t>(nr));
    QuantizeRowsInt8(staging.data(), nr, full_cols, c0, c1, q.data(), scales.data());
    Write(w.buffer, static_cast<size_t>((w.row_offset + r) * v.cols), q.data(), q.size());
    backend_->Upload(scales_[w.buffer] + w.row_offset + r, scales.data(), scales.size() * sizeof(float));
  }
  return absl::OkStatus();
}

void LlamaWeights::ZeroPadding() {
  for (const WeightSlice& w : spec_.weights()) {
    if (w.split != SplitKind::kVocab) continue;
    const kernels::WeightView& v = views_[w.buffer];
    const int64_t real = w.end - w.begin;
    if (real >= v.rows) continue;
    const size_t row_bytes = static_cast<size_t>(v.cols) * DTypeSize(v.dtype);
    std::vector<uint8_t> zeros(static_cast<size_t>(v.rows - real) * row_bytes, 0);
    Write(w.buffer, static_cast<size_t>(real) * row_bytes, zeros.data(), zeros.size());
  }
}

absl::StatusOr<std::unique_ptr<LlamaWeights>> LlamaWeights::Load(const checkpoint::Checkpoint& ckpt,
                                                                 const ShardSpec& spec,
                                                                 kernels::Backend* backend,
                                                                 const WeightLoadOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("LlamaWeights::Load: backend is null");
  // A buffer takes the dtype of its first tensor (fused siblings are converted to it when they differ).
  const bool int8 = options.quantization == WeightQuantization::kInt8;
  if (int8 && !backend->supports_int8_weights()) {
    return absl::InvalidArgumentError(absl::StrCat("--quantization int8 is not supported on backend ", backend->name(),
                                                   " yet: use --device cpu (see docs/QUANTIZATION.md)"));
  }
  if (options.quantize_lm_head && !int8) {
    return absl::InvalidArgumentError("--quantize-lm-head needs --quantization int8");
  }
  if (options.quantize_lm_head && spec.BufferIndex(LocalWeight::kLmHead) < 0) {
    return absl::InvalidArgumentError(
        "--quantize-lm-head: this model ties lm_head to the embedding (tie_word_embeddings), which stays in the "
        "checkpoint dtype; drop the flag");
  }
  std::vector<DType> dtypes(spec.buffers().size(), DType::kF32);
  std::vector<bool> chosen(spec.buffers().size(), false);
  for (const WeightSlice& w : spec.weights()) {
    TP_ASSIGN_OR_RETURN(const checkpoint::TensorInfo* info, ckpt.Get(w.name));
    if (chosen[w.buffer]) continue;
    chosen[w.buffer] = true;
    const LocalWeight kind = spec.buffers()[w.buffer].kind;
    if (IsNorm(kind)) continue;  // float32
    dtypes[w.buffer] = options.dtype.has_value() ? *options.dtype : info->dtype;
    if (int8 && (IsProjection(kind) || (kind == LocalWeight::kLmHead && options.quantize_lm_head))) {
      dtypes[w.buffer] = DType::kI8;
    }
  }
  std::unique_ptr<LlamaWeights> weights(new LlamaWeights(spec, backend));
  weights->Allocate(dtypes);

  std::vector<uint8_t> staging;
  for (const WeightSlice& w : spec.weights()) {
    const kernels::WeightView& v = weights->views_[w.buffer];
    if (v.dtype == DType::kI8) {
      TP_RETURN_IF_ERROR(weights->LoadInt8(ckpt, w));
      continue;
    }
    const size_t elem = DTypeSize(v.dtype);
    const size_t offset = static_cast<size_t>(w.row_offset * v.cols) * elem;
    const size_t bytes = static_cast<size_t>(w.local_rows() * w.local_cols()) * elem;
    if (bytes == 0) continue;  // a rank that holds only vocab padding
    if (backend->is_host()) {
      void* dst = static_cast<uint8_t*>(weights->allocations_[w.buffer]) + offset;
      TP_RETURN_IF_ERROR(ckpt.ReadSlice(w.name, w.full_shape, w.dim, w.begin, w.end, v.dtype, dst));
    } else {
      staging.resize(bytes);
      TP_RETURN_IF_ERROR(
          ckpt.ReadSlice(w.name, w.full_shape, w.dim, w.begin, w.end, v.dtype, staging.data()));
      weights->Write(w.buffer, offset, staging.data(), bytes);
    }
  }
  weights->ZeroPadding();
  weights->PackForMatmul();
  backend->Synchronize();
  return weights;
}

absl::StatusOr<std::unique_ptr<LlamaWeights>> LlamaWeights::Random(const ShardSpec& spec,
                                                                   kernels::Backend* backend,
                                                                   const RandomWeightOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("LlamaWeights::Random: backend is null");
  if (options.dtype == DType::kI8) {
    return absl::InvalidArgumentError("LlamaWeights::Random: int8 comes from --quantization at load, not a dtype");
  }
  std::vector<DType> dtypes(spec.buffers().size(), options.dtype);
  for (size_t i = 0; i < dtypes.size(); ++i) {
    if (IsNorm(spec.buffers()[i].kind)) dtypes[i] = DType::kF32;
  }
  std::unique_ptr<LlamaWeights> weights(new LlamaWeights(spec, backend));
  weights->Allocate(dtypes);

  const int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
  std::vector<float> values;
  std::vector<uint8_t> converted;
  for (const WeightSlice& w : spec.weights()) {
    const kernels::WeightView& v = weights->views_[w.buffer];
    const LocalWeight kind = spec.buffers()[w.buffer].kind;
    const int64_t full_cols = w.full_shape.size() == 2 ? w.full_shape[1] : w.full_shape[0];
    const bool norm = IsNorm(kind);
    const bool embedding = kind == LocalWeight::kEmbed;
    const double scale = norm ? 0.1 : embedding ? 1.0 : std::sqrt(3.0 / static_cast<double>(full_cols));
    const uint64_t key = SplitMix64(options.seed ^ Fnv1a(w.name));
    const int64_t rows = w.local_rows(), cols = w.local_cols();
    // Global (row, col) of local (r, c): the split dimension is offset by the slice begin.
    const int64_t row0 = (w.full_shape.size() == 2 && w.dim == 0) ? w.begin : 0;
    const int64_t col0 = (w.full_shape.size() == 1 || w.dim == 1) ? w.begin : 0;
    const int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(cols, 1));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t nr = std::min(chunk_rows, rows - r0);
      values.resize(static_cast<size_t>(nr * cols));
      auto fill = [&](int64_t a, int64_t b) {
        for (int64_t r = a; r < b; ++r) {
          const uint64_t grow = static_cast<uint64_t>(row0 + r0 + r);
          for (int64_t c = 0; c < cols; ++c) {
            const uint64_t idx = grow * static_cast<uint64_t>(full_cols) + static_cast<uint64_t>(col0 + c);
            const double u = static_cast<double>(SplitMix64(key + idx) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
            values[static_cast<size_t>(r * cols + c)] = static_cast<float>((norm ? 1.0 : 0.0) + scale * u);
          }
        }
      };
      if (nr * cols < (1 << 16) || threads == 1) {
        fill(0, nr);
      } else {
        std::vector<std::thread> pool;
        const int64_t per = (nr + threads - 1) / threads;
        for (int t = 0; t < threads; ++t) {
          const int64_t a = t * per, b = std::min(nr, a + per);
          if (a < b) pool.emplace_back(fill, a, b);
        }
        for (std::thread& th : pool) th.join();
      }
      const size_t elem = DTypeSize(v.dtype);
      converted.resize(values.size() * elem);
      FromF32(values.data(), values.size(), v.dtype, converted.data());
      const size_t offset = static_cast<size_t>((w.row_offset + r0) * v.cols) * elem;
      weights->Write(w.buffer, offset, converted.data(), converted.size());
    }
  }
  weights->ZeroPadding();
  weights->PackForMatmul();
  backend->Synchronize();
  return weights;
}

}  // namespace tpserve::model
