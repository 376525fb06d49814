// GGUF (llama.cpp's model file) output: a small v3 writer, and an exporter that turns a Hugging Face Llama
// checkpoint directory + its tokenizer.model into one .gguf that llama.cpp loads as architecture "llama".
// Used by bench/gguf_export (bench/compare-llamacpp runs both engines on the same weights). Written from the
// format description in llama.cpp's ggml/include/gguf.h; no llama.cpp code.
//
// File layout (all little endian): "GGUF", u32 version 3, u64 tensor count, u64 KV count, the KV pairs
// (string key, u32 value type, value; strings are u64 length + bytes, arrays u32 element type + u64 count +
// elements), the tensor infos (name, u32 n_dims, n_dims x u64 dims INNERMOST FIRST, u32 ggml type, u64 offset
// into the data blob), zero padding to the alignment, then the data blob, each tensor at an aligned offset.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace tpserve::checkpoint {

// ggml tensor element types this writer emits (values are ggml's enum ggml_type).
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 30 };

// "f32", "f16" or "bf16" -> the ggml type; anything else is INVALID_ARGUMENT naming the value and the choices.
absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name);
DType GgmlTypeToDType(GgmlType t);

// One tensor to write. Rows are slices along shape[0] (the PyTorch outermost dimension).
struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch order, outermost first: [out_features, in_features], or [n]
  GgmlType type = GgmlType::kF32;
  // Writes rows [begin, end) as `type`, row-major contiguous, into dst. Called in increasing row order with
  // begin and end multiples of row_multiple (end may also be shape[0]).
  std::function<absl::Status(int64_t begin, int64_t end, void* dst)> read_rows;
  int64_t row_multiple = 1;
};

// Collects metadata and tensors, then writes the whole file in one pass. Tensor data is pulled through
// read_rows in chunks of about chunk_bytes, so memory stays bounded whatever the model size.
// Not thread-safe.
class GgufWriter {
 public:
  static constexpr uint32_t kAlignment = 32;

  void AddString(const std::string& key, const std::string& value);
  void AddUint32(const std::string& key, uint32_t value);
  void AddInt32(const std::string& key, int32_t value);
  void AddFloat32(const std::string& key, float value);
  void AddBool(const std::string& key, bool value);
  void AddStringArray(const std::string& key, const std::vector<std::string>& values);
  void AddFloat32Array(const std::string& key, const std::vector<float>& values);
  void AddInt32Array(const std::string& key, const std::vector<int32_t>& values);
  void AddTensor(GgufTensor tensor);

  // Writes PATH.partial, then renames it to PATH, so an interrupted export never leaves a complete-looking
  // file. Errors (INTERNAL for I/O, or whatever a read_rows returns) name the path or the tensor.
  absl::Status Write(const std::string& path, int64_t chunk_bytes = int64_t{64} << 20) const;

 private:
  std::string kv_;  // serialised KV pairs
  int64_t num_kv_ = 0;
  std::vector<GgufTensor> tensors_;
};

struct GgufExportOptions {
  std::string model_dir;       // config.json + safetensors / PyTorch shards (Checkpoint::Open)
  std::string tokenizer_path;  // "" = model_dir/tokenizer.model
  std::string out_path;
  std::string dtype = "f16";   // 2-D matrices: f16, bf16 or f32 (norm weights are always f32)
  int64_t chunk_bytes = int64_t{64} << 20;  // tensor data read and written this much at a time
};

// Exports a LlamaForCausalLM checkpoint the way llama.cpp's convert_hf_to_gguf.py does for LlamaModel:
// llama.* hyperparameters, tokenizer.ggml.* from the SentencePiece model (tokens, scores, token types; ids
// past the tokenizer's pieces up to vocab_size are "[PAD<id>]" UNUSED tokens, as the converter pads them),
// tensors renamed (token_embd, blk.N.attn_q, ...), and q_proj / k_proj rows permuted per head from Hugging
// Face's rotate-half rope layout to GGUF's interleaved one: GGUF row h*d + 2i + j = HF row h*d + j*d/2 + i
// (d = head_dim, i < d/2, j in {0, 1}). Conversions round to nearest even (bf16 -> f16 included).
// Errors: NOT_FOUND for a missing tokenizer.model or config.json, INVALID_ARGUMENT for an unknown dtype, an
// unreadable tokenizer.model, a tokenizer larger than vocab_size or missing / misshapen tensors.
absl::Status ExportLlamaGguf(const GgufExportOptions& options);

}  // namespace tpserve::checkpoint
