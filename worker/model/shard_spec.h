// Tensor parallelism as data: for (ModelConfig, rank, world_size), which slice of every Llama weight this
// rank holds, where it lands in the rank's fused local buffers, and which activations are partial sums
// (an all-reduce completes them) or vocab slices (an all-gather completes them).
//
// Megatron-style split (as vLLM does it):
//   q/k/v, gate/up  kColumn     rows (output features) split: whole heads / MLP columns per rank
//   o_proj, down    kRow        columns (input features) split: output is partial -> all-reduce
//   embed, lm_head  kVocab      vocab rows split, vocab padded to a multiple of tp
//   norms           kReplicated
// KV heads: when tp <= num_kv_heads each rank holds num_kv_heads / tp of them; when tp > num_kv_heads
// each KV head is replicated on tp / num_kv_heads consecutive ranks (the ranks whose q heads read it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace tpserve::model {

enum class SplitKind {
  kColumn,      // dim 0 (output features) split
  kRow,         // dim 1 (input features) split
  kVocab,       // dim 0 (vocab rows) split, padded
  kReplicated,  // every rank holds all of it
};
const char* SplitKindName(SplitKind k);

// Local weight buffers of one rank. Fused buffers hold several checkpoint tensors stacked by rows.
enum class LocalWeight {
  kEmbed,      // [local_vocab, hidden]   (padding rows are zero)
  kInputNorm,  // [hidden] per layer
  kQkv,        // [(local_heads + 2 * local_kv_heads) * head_dim, hidden] per layer: q | k | v rows
  kOProj,      // [hidden, local_heads * head_dim] per layer
  kPostNorm,   // [hidden] per layer
  kGateUp,     // [2 * local_intermediate, hidden] per layer: gate | up rows
  kDown,       // [hidden, local_intermediate] per layer
  kFinalNorm,  // [hidden]
  kLmHead,     // [local_vocab, hidden] (absent when tie_word_embeddings: kEmbed serves)
};
const char* LocalWeightName(LocalWeight w);

// One rank's buffer: `layer` is -1 for the non-layer weights.
struct LocalBuffer {
  LocalWeight kind = LocalWeight::kEmbed;
  int layer = -1;
  int64_t rows = 0;
  int64_t cols = 0;
  bool replicated = false;  // identical on every rank (norms)
  std::string DebugName() const;  // "layers.3.qkv", "embed"
};

// One checkpoint tensor and the part of it this rank reads.
struct WeightSlice {
  std::string name;                // HF name, "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> full_shape; // shape in the checkpoint: [rows, cols] or [n]
  SplitKind split = SplitKind::kReplicated;
  int dim = 0;                     // the dimension read by range (0 unless kRow)
  int64_t begin = 0;               // this rank's range along `dim`
  int64_t end = 0;
  int buffer = 0;                  // index into ShardSpec::buffers()
  int64_t row_offset = 0;          // first row of the slice inside that buffer (fused q|k|v, gate|up)
  int64_t local_rows() const;      // rows of the slice as stored locally
  int64_t local_cols() const;
};

// Activations of the forward pass and their state on this rank.
enum class ActivationState {
  kMirrored,  // identical on every rank
  kLocal,     // this rank's heads / columns / vocab slice
  kPartial,   // this rank's partial sum: all-reduce makes it mirrored
};
struct ActivationSpec {
  std::string name;   // also the dump name
  std::string shape;  // human-readable, e.g. "[tokens, hidden]"
  ActivationState state = ActivationState::kMirrored;
};

class ShardSpec {
 public:
  // INVALID_ARGUMENT naming the dimension when the config cannot be split `world_size` ways, e.g.
  // "num_attention_heads 8 is not divisible by --tp 3".
  static absl::StatusOr<ShardSpec> Create(const ModelConfig& config, int rank, int world_size);

  const ModelConfig& config() const { return config_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  int local_heads() const { return local_heads_; }        // q heads on this rank
  int head_begin() const { return head_begin_; }          // first global q head
  int local_kv_heads() const { return local_kv_heads_; }  // KV heads on this rank (>= 1)
  int kv_head_begin() const { return kv_head_begin_; }    // first global KV head
  bool kv_replicated() const { return world_size_ > config_.num_kv_heads; }
  int64_t local_intermediate() const { return local_intermediate_; }
  int64_t local_q_size() const { return int64_t{local_heads_} * config_.head_dim; }
  int64_t local_kv_size() const { return int64_t{local_kv_heads_} * config_.head_dim; }
  int64_t local_qkv_size() const { return local_q_size() + 2 * local_kv_size(); }

  int64_t padded_vocab() const { return padded_vocab_; }  // multiple of world_size, >= vocab_size
  int64_t local_vocab() const { return padded_vocab_ / world_size_; }
  int64_t vocab_begin() const { return int64_t{rank_} * local_vocab(); }  // first global id of the slice

  const std::vector<LocalBuffer>& buffers() const { return buffers_; }
  const std::vector<WeightSlice>& weights() const { return weights_; }
  const std::vector<ActivationSpec>& activations() const { return activations_; }
  const ActivationSpec& activation(const std::string& name) const;  // TP_CHECKs it exists
  // Index of the buffer for (kind, layer); -1 when absent (kLmHead with tied embeddings).
  int BufferIndex(LocalWeight kind, int layer = -1) const;

  // Elements this rank holds (padding rows included), and the replicated part of them.
  int64_t LocalElements() const;
  int64_t ReplicatedElements() const;
  // Elements of the whole (unsharded, unpadded) model.
  static int64_t TotalElements(const ModelConfig& config);

 private:
  ShardSpec() = default;
  void Build();

  ModelConfig config_;
  int rank_ = 0;
  int world_size_ = 1;
  int local_heads_ = 0;
  int head_begin_ = 0;
  int local_kv_heads_ = 0;
  int kv_head_begin_ = 0;
  int64_t local_intermediate_ = 0;
  int64_t padded_vocab_ = 0;
  std::vector<LocalBuffer> buffers_;
  std::vector<WeightSlice> weights_;
  std::vector<ActivationSpec> activations_;
};

// Validates only (the checks of ShardSpec::Create, without building tables).
absl::Status ValidateTensorParallel(const ModelConfig& config, int world_size);

}  // namespace tpserve::model
