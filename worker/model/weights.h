// One rank's Llama weights in backend memory, laid out by the ShardSpec's local buffers (fused q|k|v and
// gate|up). Loaded slice by slice from a Checkpoint (only this rank's rows/columns are read, so resident
// weights stay ~ total / tp + replicated), or generated from a seed for benchmarks of full-size shapes.
// Thread-compatible; the Backend must outlive it (it frees its allocations there).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/model/quantization.h"
#include "worker/model/shard_spec.h"

namespace tpserve::model {

struct WeightLoadOptions {
  // Matrices (embedding, projections, lm_head) in this dtype; unset => keep the stored dtype.
  // Norm weights are always float32 (exact for bf16/f16, and they are tiny).
  std::optional<DType> dtype;
  // kInt8: qkv, o_proj, gate_up and down become int8 with per-row scales, quantized slice by slice as
  // they load (quantization.h). Needs a backend with supports_int8_weights().
  WeightQuantization quantization = WeightQuantization::kNone;
  // With kInt8, lm_head too (INVALID_ARGUMENT when the model ties it to the embedding).
  bool quantize_lm_head = false;
};

struct RandomWeightOptions {
  uint64_t seed = 0;
  DType dtype = DType::kBF16;  // matrices; norms are float32
};

// Views into one decoder layer's buffers.
struct LayerWeights {
  kernels::WeightView input_norm;  // [1, hidden]
  kernels::WeightView qkv;         // [local q + 2 * local kv, hidden]
  kernels::WeightView o_proj;      // [hidden, local q]
  kernels::WeightView post_norm;   // [1, hidden]
  kernels::WeightView gate_up;     // [2 * local intermediate, hidden]
  kernels::WeightView down;        // [hidden, local intermediate]
};

class LlamaWeights {
 public:
  ~LlamaWeights();
  LlamaWeights(const LlamaWeights&) = delete;
  LlamaWeights& operator=(const LlamaWeights&) = delete;

  // Errors name the tensor (missing, wrong shape) and come from the checkpoint reader.
  static absl::StatusOr<std::unique_ptr<LlamaWeights>> Load(const checkpoint::Checkpoint& checkpoint,
                                                            const ShardSpec& spec, kernels::Backend* backend,
                                                            const WeightLoadOptions& options);
  // Element (row, col) of every checkpoint tensor is a hash of (seed, tensor name, row, col), so a random
  // model is the same model at every tp (TP=2 logits can be compared with TP=1). Matrices ~ U(+-sqrt(3 /
  // in_features)) (unit variance after the matmul), embeddings ~ U(+-1), norms ~ 1 + U(+-0.1).
  static absl::StatusOr<std::unique_ptr<LlamaWeights>> Random(const ShardSpec& spec, kernels::Backend* backend,
                                                              const RandomWeightOptions& options);

  size_t bytes() const { return bytes_; }  // backend memory held, padding rows and int8 scales included
  const kernels::WeightView& embed() const { return embed_; }          // [local_vocab, hidden]
  const kernels::WeightView& lm_head() const { return lm_head_; }      // [local_vocab, hidden]
  const kernels::WeightView& final_norm() const { return final_norm_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  // The view of ShardSpec::buffers()[i].
  const kernels::WeightView& buffer(int i) const { return views_[i]; }

 private:
  LlamaWeights(const ShardSpec& spec, kernels::Backend* backend) : spec_(spec), backend_(backend) {}
  // Allocates every buffer in the chosen dtypes and binds the named views.
  void Allocate(const std::vector<DType>& dtypes);
  // (Re)binds the named views (layers_, embed_, lm_head_, final_norm_) to views_.
  void BindViews();
  // Once every buffer is written: lets the backend rearrange the matmul-only weights in place into the
  // layout its Matmul reads (Backend::PackMatmulWeight); no buffer is written after this.
  void PackForMatmul();
  // Writes `bytes` of host data at byte `offset` of buffer `index`.
  void Write(int index, size_t offset, const void* host, size_t bytes);
  // Reads slice `w` from the checkpoint into int8 buffer w.buffer, quantizing rows chunk by chunk.
  absl::Status LoadInt8(const checkpoint::Checkpoint& ckpt, const WeightSlice& w);
  // Zeroes the rows of vocab buffers past the real vocab (padding), so their logits are exactly 0.
  void ZeroPadding();

  const ShardSpec spec_;
  kernels::Backend* backend_;
  std::vector<void*> allocations_;
  std::vector<float*> scales_;  // per buffer: its int8 scales ([rows] float32), nullptr when not int8
  std::vector<kernels::WeightView> views_;
  size_t bytes_ = 0;
  kernels::WeightView embed_, lm_head_, final_norm_;
  std::vector<LayerWeights> layers_;
};

}  // namespace tpserve::model
