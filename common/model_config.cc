// config.json (LlamaForCausalLM) parsing and writing.
#include "common/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

using json = nlohmann::json;

absl::Status ReadInt(const json& j, const char* key, bool required, int* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing field '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > (1LL << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a non-negative integer, got ", it->dump()));
  }
  *out = it->get<int>();
  return absl::OkStatus();
}

absl::Status ReadFloat(const json& j, const char* key, float* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a number, got ", it->dump()));
  }
  // A double past float's range (rope_theta 1e39) would become inf and pass the "> 0" checks.
  const double v = it->get<double>();
  if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a finite float32 number, got ", it->dump()));
  }
  *out = static_cast<float>(v);
  return absl::OkStatus();
}

// eos_token_id may be an int or a list (first wins). Anything that is not an id in [0, INT_MAX] is -1
// (absent): narrowing 4294967298 to int would silently yield 2.
int ReadTokenId(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return -1;
  const json& v = it->is_array() && !it->empty() ? (*it)[0] : *it;
  if (!v.is_number_integer()) return -1;
  if (v.is_number_unsigned()) {
    return v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int>::max()) ? v.get<int>() : -1;
  }
  const int64_t id = v.get<int64_t>();
  return id >= 0 && id <= std::numeric_limits<int>::max() ? static_cast<int>(id) : -1;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  ModelConfig c;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = it->get<std::string>();
  if (c.model_type != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: model_type '", c.model_type,
        "' is not supported; tpserve serves Llama-architecture models (model_type \"llama\")"));
  }
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty()) {
    std::string arch = (*it)[0].is_string() ? (*it)[0].get<std::string>() : "";
    if (arch != "LlamaForCausalLM") {
      return absl::InvalidArgumentError(absl::StrCat("config.json: architecture '", arch,
                                                     "' is not supported; expected LlamaForCausalLM"));
    }
  }
  absl::Status s;
  if (!(s = ReadInt(j, "hidden_size", true, &c.hidden_size)).ok()) return s;
  if (!(s = ReadInt(j, "intermediate_size", true, &c.intermediate_size)).ok()) return s;
  if (!(s = ReadInt(j, "num_hidden_layers", true, &c.num_layers)).ok()) return s;
  if (!(s = ReadInt(j, "num_attention_heads", true, &c.num_heads)).ok()) return s;
  c.num_kv_heads = c.num_heads;
  if (!(s = ReadInt(j, "num_key_value_heads", false, &c.num_kv_heads)).ok()) return s;
  if (!(s = ReadInt(j, "vocab_size", true, &c.vocab_size)).ok()) return s;
  if (!(s = ReadInt(j, "max_position_embeddings", false, &c.max_position_embeddings)).ok()) return s;
  if (!(s = ReadFloat(j, "rms_norm_eps", &c.rms_norm_eps)).ok()) return s;
  if (!(s = ReadFloat(j, "rope_theta", &c.rope_theta)).ok()) return s;
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) {
    c.tie_word_embeddings = it->get<bool>();
  }
  if (auto it = j.find("torch_dtype"); it != j.end() && it->is_string()) {
    auto dt = ParseDType(it->get<std::string>());
    if (!dt.ok()) return absl::InvalidArgumentError(absl::StrCat("config.json: torch_dtype: ", dt.status().message()));
    c.torch_dtype = *dt;
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return absl::InvalidArgumentError("config.json: rope_scaling is not supported (expected null)");
  }
  c.bos_token_id = ReadTokenId(j, "bos_token_id");
  c.eos_token_id = ReadTokenId(j, "eos_token_id");

  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.intermediate_size <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 0) {
    return absl::InvalidArgumentError(
        "config.json: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
        "num_key_value_heads, vocab_size and max_position_embeddings must all be positive");
  }
  c.head_dim = c.hidden_size / c.num_heads;
  if (auto it = j.find("head_dim"); it != j.end() && !it->is_null()) {
    if (!(s = ReadInt(j, "head_dim", true, &c.head_dim)).ok()) return s;
  } else if (c.hidden_size % c.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: hidden_size ", c.hidden_size,
                                                   " is not divisible by num_attention_heads ", c.num_heads));
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: head_dim ", c.head_dim, " must be even and positive"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0)) {
    return absl::InvalidArgumentError("config.json: rms_norm_eps and rope_theta must be positive");
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": is --model a model directory?"));
  std::stringstream ss;
  ss << f.rdbuf();
  auto c = ParseModelConfig(ss.str());
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = DTypeName(c.torch_dtype);
  j["hidden_act"] = "silu";
  j["rope_scaling"] = nullptr;
  j["bos_token_id"] = c.bos_token_id >= 0 ? c.bos_token_id : 1;
  j["eos_token_id"] = c.eos_token_id >= 0 ? c.eos_token_id : 2;
  return j.dump(2) + "\n";
}

}  // namespace tpserve
