// The plain reference backend: obviously-correct loops, float32 storage, double accumulators. Every other
// backend is tested against it, so clarity wins over speed here.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "kernels/backend.h"

namespace tpserve::kernels {
namespace {

// Element (r, c) of a weight in its stored dtype, as float32.
float WeightAt(const WeightView& w, int64_t r, int64_t c) {
  const int64_t i = r * w.cols + c;
  switch (w.dtype) {
    case DType::kF32: return static_cast<const float*>(w.data)[i];
    case DType::kBF16: return BF16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kI8: return w.scales[r] * static_cast<float>(static_cast<const int8_t*>(w.data)[i]);
  }
  TP_CHECK(false) << "unknown weight dtype";
  return 0.0f;
}

// Per layer: K and V, each [num_blocks, block_size, num_kv_heads, head_dim] float32.
class ReferenceKvCache : public KvCache {
 public:
  explicit ReferenceKvCache(const KvCacheSpec& spec) : spec_(spec) {
    const size_t per_layer = LayerElems();
    k_.resize(spec.num_layers);
    v_.resize(spec.num_layers);
    for (int l = 0; l < spec.num_layers; ++l) {
      k_[l].assign(per_layer, 0.0f);
      v_[l].assign(per_layer, 0.0f);
    }
  }
  const KvCacheSpec& spec() const override { return spec_; }
  size_t bytes() const override { return LayerElems() * 2 * sizeof(float) * spec_.num_layers; }

  size_t LayerElems() const {
    return static_cast<size_t>(spec_.num_blocks) * spec_.block_size * spec_.num_kv_heads * spec_.head_dim;
  }
  float* k(int layer) { return k_[layer].data(); }
  float* v(int layer) { return v_[layer].data(); }
  const float* k(int layer) const { return k_[layer].data(); }
  const float* v(int layer) const { return v_[layer].data(); }

 private:
  KvCacheSpec spec_;
  std::vector<std::vector<float>> k_, v_;
};

class ReferenceBackend : public Backend {
 public:
  std::string name() const override { return "reference"; }
  bool is_host() const override { return true; }
  bool supports_int8_weights() const override { return true; }

  void* Alloc(size_t bytes) override {
    const size_t rounded = (bytes + 63) / 64 * 64;  // aligned_alloc wants a multiple of the alignment
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    TP_CHECK(p != nullptr) << "out of host memory allocating " << bytes << " bytes";
    return p;
  }
  void Free(void* p) override { std::free(p); }
  void Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void Download(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void Synchronize() override {}

  void Matmul(const float* x, int64_t m, const WeightView& w, float* y) override {
    // kI8: the integer row, and its scale applied to the finished float64 dot product.
    const bool int8 = w.dtype == DType::kI8;
    std::vector<float> row(w.cols);  // weight row o as float32
    for (int64_t o = 0; o < w.rows; ++o) {
      for (int64_t c = 0; c < w.cols; ++c) {
        row[c] = int8 ? static_cast<float>(static_cast<const int8_t*>(w.data)[o * w.cols + c]) : WeightAt(w, o, c);
      }
      const double scale = int8 ? static_cast<double>(w.scales[o]) : 1.0;
      for (int64_t r = 0; r < m; ++r) {
        double acc = 0.0;
        for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(x[r * w.cols + c]) * row[c];
        y[r * w.rows + o] = static_cast<float>(acc * scale);
      }
    }
  }

  void Embedding(const int32_t* ids, int64_t n, const WeightView& table, int64_t vocab_begin,
                 float* out) override {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = static_cast<int64_t>(ids[i]) - vocab_begin;
      const bool mine = row >= 0 && row < table.rows;
      for (int64_t c = 0; c < table.cols; ++c) {
        out[i * table.cols + c] = mine ? WeightAt(table, row, c) : 0.0f;
      }
    }
  }

  void RmsNorm(const float* x, int64_t rows, const WeightView& w, float eps, float* out) override {
    const int64_t d = w.cols;
    for (int64_t r = 0; r < rows; ++r) {
      double sum_sq = 0.0;
      for (int64_t c = 0; c < d; ++c) sum_sq += static_cast<double>(x[r * d + c]) * x[r * d + c];
      const double inv = 1.0 / std::sqrt(sum_sq / d + eps);
      for (int64_t c = 0; c < d; ++c) {
        out[r * d + c] = static_cast<float>(x[r * d + c] * inv * WeightAt(w, 0, c));
      }
    }
  }

  void AddRmsNorm(float* residual, const float* x, int64_t rows, const WeightView& w, float eps,
                  float* out) override {
    for (int64_t i = 0; i < rows * w.cols; ++i) residual[i] += x[i];
    RmsNorm(residual, rows, w, eps, out);
  }

  void Rope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk, int head_dim,
            float theta) override {
    const int half = head_dim / 2;
    // As HF computes it, all in float32: inv_freq = 1 / (theta ** (arange(0, hd, 2) / hd)),
    // angle = float(pos) * inv_freq, then cos/sin of the float32 angle.
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      const float p = static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(exponent)));
      inv_freq[i] = 1.0f / p;
    }
    auto rotate = [&](float* head, float pos) {
      for (int i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[i];
        const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
        const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
        const float x0 = head[i], x1 = head[i + half];
        head[i] = x0 * c - x1 * s;
        head[i + half] = x1 * c + x0 * s;
      }
    };
    for (int64_t t = 0; t < n; ++t) {
      const float pos = static_cast<float>(positions[t]);
      for (int h = 0; h < nq; ++h) rotate(q + (t * nq + h) * head_dim, pos);
      for (int h = 0; h < nk; ++h) rotate(k + (t * nk + h) * head_dim, pos);
    }
  }

  void SiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out) override {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < inter; ++i) {
        const double g = gate_up[r * 2 * inter + i];
        const double u = gate_up[r * 2 * inter + inter + i];
        out[r * inter + i] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
      }
    }
  }

  void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out) override {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(out + i * dim, x + static_cast<int64_t>(rows[i]) * dim, dim * sizeof(float));
    }
  }

  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) override {
    if (spec.num_layers <= 0 || spec.num_blocks <= 0 || spec.block_size <= 0 || spec.num_kv_heads <= 0 ||
        spec.head_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KvCacheSpec needs positive num_layers, num_blocks, block_size, num_kv_heads and head_dim; got ",
          spec.num_layers, ", ", spec.num_blocks, ", ", spec.block_size, ", ", spec.num_kv_heads, ", ",
          spec.head_dim));
    }
    return std::unique_ptr<KvCache>(new ReferenceKvCache(spec));
  }

  size_t KvBlockBytes(const KvCacheSpec& spec) const override {
    return static_cast<size_t>(spec.num_layers) * 2 * spec.block_size * spec.num_kv_heads * spec.head_dim *
           sizeof(float);
  }

  // Negative slots (padding tokens) are skipped.
  void WriteKv(KvCache& cache, int layer, const float* k, const float* v,
               const AttentionBatch& batch) override {
    auto* c = dynamic_cast<ReferenceKvCache*>(&cache);
    TP_CHECK(c != nullptr) << "KV cache was not created by the reference backend";
    const KvCacheSpec& s = c->spec();
    TP_CHECK(layer >= 0 && layer < s.num_layers) << "layer " << layer;
    const int64_t row = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
    for (int t = 0; t < batch.num_tokens; ++t) {
      const int64_t slot = batch.slot_mapping[t];
      if (slot < 0) continue;
      TP_CHECK(slot < static_cast<int64_t>(s.num_blocks) * s.block_size) << "slot " << slot;
      std::memcpy(c->k(layer) + slot * row, k + t * row, row * sizeof(float));
      std::memcpy(c->v(layer) + slot * row, v + t * row, row * sizeof(float));
    }
  }

  void Attention(const KvCache& cache, int layer, const float* q, const AttentionBatch& batch, int nq,
                 float scale, float* out) override {
    const auto* c = dynamic_cast<const ReferenceKvCache*>(&cache);
    TP_CHECK(c != nullptr) << "KV cache was not created by the reference backend";
    const KvCacheSpec& s = c->spec();
    const int nk = s.num_kv_heads, hd = s.head_dim;
    TP_CHECK(nq % nk == 0) << "nq " << nq << " not a multiple of nk " << nk;
    const int group = nq / nk;
    const float* kc = c->k(layer);
    const float* vc = c->v(layer);
    std::vector<double> scores, acc(hd);
    for (int seq = 0; seq < batch.num_seqs; ++seq) {
      const int32_t* table = batch.block_tables + static_cast<int64_t>(seq) * batch.max_blocks_per_seq;
      for (int t = batch.query_start[seq]; t < batch.query_start[seq + 1]; ++t) {
        const int ctx = batch.positions[t] + 1;  // keys 0..positions[t]
        scores.assign(ctx, 0.0);
        for (int h = 0; h < nq; ++h) {
          const int kh = h / group;
          const float* qh = q + (static_cast<int64_t>(t) * nq + h) * hd;
          auto key_row = [&](const float* base, int p) {
            const int64_t block = table[p / s.block_size];
            const int64_t slot = block * s.block_size + p % s.block_size;
            return base + (slot * nk + kh) * hd;
          };
          double max_score = -INFINITY;
          for (int p = 0; p < ctx; ++p) {
            const float* kr = key_row(kc, p);
            double dot = 0.0;
            for (int d = 0; d < hd; ++d) dot += static_cast<double>(qh[d]) * kr[d];
            scores[p] = dot * scale;
            if (scores[p] > max_score) max_score = scores[p];
          }
          double denom = 0.0;
          for (int p = 0; p < ctx; ++p) {
            scores[p] = std::exp(scores[p] - max_score);
            denom += scores[p];
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int p = 0; p < ctx; ++p) {
            const float* vr = key_row(vc, p);
            for (int d = 0; d < hd; ++d) acc[d] += scores[p] * vr[d];
          }
          float* oh = out + (static_cast<int64_t>(t) * nq + h) * hd;
          for (int d = 0; d < hd; ++d) oh[d] = static_cast<float>(acc[d] / denom);
        }
      }
    }
  }
};

}  // namespace

std::unique_ptr<Backend> CreateReferenceBackend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace tpserve::kernels
