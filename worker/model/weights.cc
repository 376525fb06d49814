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
  }
}

}  // namespace

LlamaWeights::~LlamaWeights() {
  for (void* p : allocations_) backend_->Free(p);
}

void LlamaWeights::Allocate(const std::vector<DType>& dtypes) {
  const std::vector<LocalBuffer>& bufs = spec_.buffers();
  views_.resize(bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) {
    const size_t bytes = static_cast<size_t>(bufs[i].rows * bufs[i].cols) * DTypeSize(dtypes[i]);
    void* p = backend_->Alloc(std::max<size_t>(bytes, 64));
    allocations_.push_back(p);
    bytes_ += bytes;
    views_[i] = kernels::WeightView{p, dtypes[i], bufs[i].rows, bufs[i].cols};
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
  std::vector<DType> dtypes(spec.buffers().size(), DType::kF32);
  std::vector<bool> chosen(spec.buffers().size(), false);
  for (const WeightSlice& w : spec.weights()) {
    TP_ASSIGN_OR_RETURN(const checkpoint::TensorInfo* info, ckpt.Get(w.name));
    if (chosen[w.buffer]) continue;
    chosen[w.buffer] = true;
    if (IsNorm(spec.buffers()[w.buffer].kind)) continue;  // float32
    dtypes[w.buffer] = options.dtype.has_value() ? *options.dtype : info->dtype;
  }
  std::unique_ptr<LlamaWeights> weights(new LlamaWeights(spec, backend));
  weights->Allocate(dtypes);

  std::vector<uint8_t> staging;
  for (const WeightSlice& w : spec.weights()) {
    const kernels::WeightView& v = weights->views_[w.buffer];
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
