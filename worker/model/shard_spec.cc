// Builds the per-rank weight and activation tables of the tensor-parallel Llama (see shard_spec.h).
#include "worker/model/shard_spec.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tpserve::model {

const char* SplitKindName(SplitKind k) {
  switch (k) {
    case SplitKind::kColumn: return "column";
    case SplitKind::kRow: return "row";
    case SplitKind::kVocab: return "vocab";
    case SplitKind::kReplicated: return "replicated";
  }
  return "?";
}

const char* LocalWeightName(LocalWeight w) {
  switch (w) {
    case LocalWeight::kEmbed: return "embed";
    case LocalWeight::kInputNorm: return "input_norm";
    case LocalWeight::kQkv: return "qkv";
    case LocalWeight::kOProj: return "o_proj";
    case LocalWeight::kPostNorm: return "post_norm";
    case LocalWeight::kGateUp: return "gate_up";
    case LocalWeight::kDown: return "down";
    case LocalWeight::kFinalNorm: return "final_norm";
    case LocalWeight::kLmHead: return "lm_head";
  }
  return "?";
}

std::string LocalBuffer::DebugName() const {
  if (layer < 0) return LocalWeightName(kind);
  return absl::StrCat("layers.", layer, ".", LocalWeightName(kind));
}

// A 1-D tensor (norm) is stored as one row.
int64_t WeightSlice::local_rows() const {
  if (full_shape.size() == 1) return 1;
  return dim == 0 ? end - begin : full_shape[0];
}

int64_t WeightSlice::local_cols() const {
  if (full_shape.size() == 1) return end - begin;
  return dim == 1 ? end - begin : full_shape[1];
}

absl::Status ValidateTensorParallel(const ModelConfig& c, int tp) {
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("--tp must be >= 1, got ", tp));
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config has a non-positive dimension (hidden_size ", c.hidden_size, ", intermediate_size ",
        c.intermediate_size, ", num_hidden_layers ", c.num_layers, ", num_attention_heads ", c.num_heads,
        ", num_key_value_heads ", c.num_kv_heads, ", head_dim ", c.head_dim, ", vocab_size ",
        c.vocab_size, ")"));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim, " must be even for RoPE"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ", c.num_heads,
                                                   " is not divisible by num_key_value_heads ",
                                                   c.num_kv_heads));
  }
  if (c.num_heads % tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_attention_heads ", c.num_heads, " is not divisible by --tp ", tp));
  }
  if (c.intermediate_size % tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("intermediate_size ", c.intermediate_size, " is not divisible by --tp ", tp));
  }
  if (tp <= c.num_kv_heads) {
    if (c.num_kv_heads % tp != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("num_key_value_heads ", c.num_kv_heads, " is not divisible by --tp ", tp));
    }
  } else if (tp % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", tp, " exceeds num_key_value_heads ",
                                                   c.num_kv_heads,
                                                   " and is not a multiple of it, so KV heads cannot be "
                                                   "replicated evenly"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardSpec> ShardSpec::Create(const ModelConfig& config, int rank, int world_size) {
  if (absl::Status s = ValidateTensorParallel(config, world_size); !s.ok()) return s;
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside [0, --tp ", world_size, ")"));
  }
  ShardSpec spec;
  spec.config_ = config;
  spec.rank_ = rank;
  spec.world_size_ = world_size;
  spec.Build();
  return spec;
}

void ShardSpec::Build() {
  const ModelConfig& c = config_;
  const int tp = world_size_;
  const int64_t hd = c.head_dim;
  const int64_t hidden = c.hidden_size;
  local_heads_ = c.num_heads / tp;
  head_begin_ = rank_ * local_heads_;
  if (tp <= c.num_kv_heads) {
    local_kv_heads_ = c.num_kv_heads / tp;
    kv_head_begin_ = rank_ * local_kv_heads_;
  } else {
    // vLLM's replication: ranks [k * r, (k + 1) * r) with r = tp / num_kv_heads hold KV head k, which
    // is exactly the head their q heads [rank * local_heads, ...) read (group size = local_heads * r).
    local_kv_heads_ = 1;
    kv_head_begin_ = rank_ / (tp / c.num_kv_heads);
  }
  local_intermediate_ = c.intermediate_size / tp;
  padded_vocab_ = (int64_t{c.vocab_size} + tp - 1) / tp * tp;
  const int64_t lv = local_vocab();
  const int64_t vb = vocab_begin();
  const int64_t ve = std::min<int64_t>(vb + lv, c.vocab_size);  // may be < vb + lv (padding)

  auto add_buffer = [&](LocalWeight kind, int layer, int64_t rows, int64_t cols, bool replicated) {
    buffers_.push_back(LocalBuffer{kind, layer, rows, cols, replicated});
    return static_cast<int>(buffers_.size() - 1);
  };
  auto add_weight = [&](std::string name, std::vector<int64_t> shape, SplitKind split, int64_t begin,
                        int64_t end, int buffer, int64_t row_offset) {
    WeightSlice w;
    w.name = std::move(name);
    w.full_shape = std::move(shape);
    w.split = split;
    w.dim = split == SplitKind::kRow ? 1 : 0;
    w.begin = begin;
    w.end = end;
    w.buffer = buffer;
    w.row_offset = row_offset;
    weights_.push_back(std::move(w));
  };

  int b = add_buffer(LocalWeight::kEmbed, -1, lv, hidden, false);
  add_weight("model.embed_tokens.weight", {c.vocab_size, hidden}, SplitKind::kVocab, vb, std::max(vb, ve),
             b, 0);
  const int64_t q_begin = int64_t{head_begin_} * hd, q_end = q_begin + local_q_size();
  const int64_t kv_begin = int64_t{kv_head_begin_} * hd, kv_end = kv_begin + local_kv_size();
  const int64_t i_begin = rank_ * local_intermediate_, i_end = i_begin + local_intermediate_;
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    b = add_buffer(LocalWeight::kInputNorm, l, 1, hidden, true);
    add_weight(p + "input_layernorm.weight", {hidden}, SplitKind::kReplicated, 0, hidden, b, 0);
    b = add_buffer(LocalWeight::kQkv, l, local_qkv_size(), hidden, false);
    add_weight(p + "self_attn.q_proj.weight", {c.q_size(), hidden}, SplitKind::kColumn, q_begin, q_end, b,
               0);
    add_weight(p + "self_attn.k_proj.weight", {c.kv_size(), hidden}, SplitKind::kColumn, kv_begin, kv_end,
               b, local_q_size());
    add_weight(p + "self_attn.v_proj.weight", {c.kv_size(), hidden}, SplitKind::kColumn, kv_begin, kv_end,
               b, local_q_size() + local_kv_size());
    b = add_buffer(LocalWeight::kOProj, l, hidden, local_q_size(), false);
    add_weight(p + "self_attn.o_proj.weight", {hidden, c.q_size()}, SplitKind::kRow, q_begin, q_end, b, 0);
    b = add_buffer(LocalWeight::kPostNorm, l, 1, hidden, true);
    add_weight(p + "post_attention_layernorm.weight", {hidden}, SplitKind::kReplicated, 0, hidden, b, 0);
    b = add_buffer(LocalWeight::kGateUp, l, 2 * local_intermediate_, hidden, false);
    add_weight(p + "mlp.gate_proj.weight", {c.intermediate_size, hidden}, SplitKind::kColumn, i_begin,
               i_end, b, 0);
    add_weight(p + "mlp.up_proj.weight", {c.intermediate_size, hidden}, SplitKind::kColumn, i_begin, i_end,
               b, local_intermediate_);
    b = add_buffer(LocalWeight::kDown, l, hidden, local_intermediate_, false);
    add_weight(p + "mlp.down_proj.weight", {hidden, c.intermediate_size}, SplitKind::kRow, i_begin, i_end,
               b, 0);
  }
  b = add_buffer(LocalWeight::kFinalNorm, -1, 1, hidden, true);
  add_weight("model.norm.weight", {hidden}, SplitKind::kReplicated, 0, hidden, b, 0);
  if (!c.tie_word_embeddings) {
    b = add_buffer(LocalWeight::kLmHead, -1, lv, hidden, false);
    add_weight("lm_head.weight", {c.vocab_size, hidden}, SplitKind::kVocab, vb, std::max(vb, ve), b, 0);
  }

  const ActivationState partial = ActivationState::kPartial;
  const ActivationState local = ActivationState::kLocal;
  const ActivationState mirrored = ActivationState::kMirrored;
  activations_ = {
      {"embed", "[tokens, hidden]", partial},         // vocab-split lookup: zeros outside the slice
      {"residual", "[tokens, hidden]", mirrored},
      {"attn_norm", "[tokens, hidden]", mirrored},
      {"qkv", "[tokens, (heads + 2 * kv_heads) * head_dim / tp]", local},
      {"q", "[tokens, heads * head_dim / tp]", local},  // after RoPE
      {"k", "[tokens, kv_heads * head_dim / tp]", local},
      {"v", "[tokens, kv_heads * head_dim / tp]", local},
      {"attn", "[tokens, heads * head_dim / tp]", local},
      {"o_proj", "[tokens, hidden]", partial},
      {"mlp_norm", "[tokens, hidden]", mirrored},
      {"gate_up", "[tokens, 2 * intermediate / tp]", local},
      {"act", "[tokens, intermediate / tp]", local},
      {"down", "[tokens, hidden]", partial},
      {"final_norm", "[tokens, hidden]", mirrored},
      {"sampled", "[sampled, hidden]", mirrored},
      {"logits_local", "[sampled, padded_vocab / tp]", local},  // all-gather completes it
      {"logits", "[sampled, vocab]", mirrored},
  };
}

const ActivationSpec& ShardSpec::activation(const std::string& name) const {
  for (const ActivationSpec& a : activations_) {
    if (a.name == name) return a;
  }
  TP_CHECK(false) << "unknown activation " << name;
  return activations_.front();
}

int ShardSpec::BufferIndex(LocalWeight kind, int layer) const {
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (buffers_[i].kind == kind && buffers_[i].layer == layer) return static_cast<int>(i);
  }
  return -1;
}

int64_t ShardSpec::LocalElements() const {
  int64_t n = 0;
  for (const LocalBuffer& b : buffers_) n += b.rows * b.cols;
  return n;
}

int64_t ShardSpec::ReplicatedElements() const {
  int64_t n = 0;
  for (const LocalBuffer& b : buffers_) {
    if (b.replicated) n += b.rows * b.cols;
  }
  return n;
}

int64_t ShardSpec::TotalElements(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t per_layer = 2 * h + (c.q_size() + 2 * c.kv_size()) * h + h * c.q_size() +
                            3 * int64_t{c.intermediate_size} * h;
  const int64_t vocab = int64_t{c.vocab_size} * h * (c.tie_word_embeddings ? 1 : 2);
  return per_layer * c.num_layers + h + vocab;
}

}  // namespace tpserve::model
