// Synthetic Llama checkpoints with seeded random weights, written the way Hugging Face releases are
// (config.json, generation_config.json, safetensors and/or PyTorch-zip shards + index), for tests,
// benchmarks and `tpserve make-model`. Weights are streamed to disk chunk by chunk, so a full
// 13B-shaped model (~26 GB bf16) never has to fit in RAM.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "common/model_config.h"

namespace tpserve::model {

struct SyntheticModelOptions {
  std::string out_dir;            // created when absent; earlier checkpoint files of a layout written now
                                  // (single file, shards, index) are removed first
  std::string preset = "tiny";    // "tiny" | "bench-0.9b" | "llama-2-13b"
  int num_layers = -1;            // -1 keeps the preset's
  DType dtype = DType::kBF16;     // weights' dtype (inv_freq buffers are always float32, as in Tulu)
  uint64_t seed = 0;
  bool write_safetensors = true;  // model.safetensors or model-0000i-of-0000n.safetensors + index
  bool write_pytorch = false;     // pytorch_model.bin or pytorch_model-0000i-of-0000n.bin + index
  int64_t max_shard_bytes = int64_t{4} << 30;
  int vocab_size = -1;            // -1 keeps the preset's (make-model sets the trained tokenizer's)
};

// "tiny": hidden 256, 4 layers, 8 heads, 4 KV heads, MLP 688, vocab 512, ctx 2048, eps 1e-5.
// "llama-2-13b": hidden 5120, 40 layers, 40 heads, 40 KV heads, MLP 13824, vocab 32000, ctx 8192
// (Tulu V2.5), eps 1e-6.
// "bench-0.9b": hidden 2048, 16 layers, 16 heads, 16 KV heads, MLP 5504, vocab 32000, ctx 4096, eps 1e-5
// (0.94 B parameters; bench/compare-llamacpp's model).
// All rope theta 1e4, bos 1, eos 2. Unknown names are INVALID_ARGUMENT.
absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name);

// The config WriteSyntheticModel writes for OPTIONS (preset with the overrides applied).
absl::StatusOr<ModelConfig> SyntheticModelConfig(const SyntheticModelOptions& options);

// Writes the model. Initialisation keeps activations sane through many layers: projections are
// normal with std 1/sqrt(fan_in) (0.014 for 13B), the residual-writing o_proj/down_proj further
// scaled by 1/sqrt(2 * layers), embeddings std 0.02, norm weights 1 + N(0, 0.02). Values depend only
// on (seed, tensor name, element index): identical across layouts, sharding, thread counts and
// num_layers. Deterministic; multi-threaded generation.
absl::Status WriteSyntheticModel(const SyntheticModelOptions& options);

}  // namespace tpserve::model
