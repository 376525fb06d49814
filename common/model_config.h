// The Llama model configuration (Hugging Face config.json, LlamaForCausalLM), shared by the coordinator
// (context length, vocab) and the workers (shapes).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace tpserve {

struct ModelConfig {
  std::string model_type = "llama";
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;            // num_hidden_layers
  int num_heads = 0;             // num_attention_heads
  int num_kv_heads = 0;          // num_key_value_heads (defaults to num_heads)
  int head_dim = 0;              // head_dim when present, else hidden_size / num_heads
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::kF32;
  // From config.json only; the tokenizer's ids win when they disagree (see coordinator/tokenizer).
  int bos_token_id = -1;
  int eos_token_id = -1;

  int64_t q_size() const { return static_cast<int64_t>(num_heads) * head_dim; }
  int64_t kv_size() const { return static_cast<int64_t>(num_kv_heads) * head_dim; }
};

// Parses config.json text. Refuses model types other than llama (INVALID_ARGUMENT naming the type),
// missing required fields and inconsistent shapes (each message names the field).
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);
// Reads DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);
// Serialises to config.json (LlamaForCausalLM) for make-model.
std::string ModelConfigToJson(const ModelConfig& c);

}  // namespace tpserve
