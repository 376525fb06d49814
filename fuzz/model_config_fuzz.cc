// libFuzzer target: config.json text through ParseModelConfig; what it accepts must be a usable shape
// (positive sizes, even head_dim, whole GQA groups, finite eps and theta), token ids must be the file's own
// numbers (or -1), and the result must survive a ModelConfigToJson round trip.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "common/model_config.h"
#include "nlohmann/json.hpp"

namespace {

// An id ParseModelConfig reports must be what the file says (first element for a list), never a wrapped
// or truncated number; -1 means "not given / unusable".
void CheckTokenId(const nlohmann::json& j, const char* key, int parsed) {
  if (parsed == -1) return;
  auto it = j.find(key);
  const nlohmann::json* v = it == j.end() ? nullptr : &*it;
  if (v != nullptr && v->is_array() && !v->empty()) v = &(*v)[0];
  if (v == nullptr || !v->is_number_integer() || parsed < 0 ||
      (v->is_number_unsigned() ? v->get<uint64_t>() != static_cast<uint64_t>(parsed)
                               : v->get<int64_t>() != parsed)) {
    std::fprintf(stderr, "%s parsed as %d but the file says %s\n", key, parsed,
                 v == nullptr ? "nothing" : v->dump().c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = tpserve::ParseModelConfig(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) return 0;
  const tpserve::ModelConfig& c = *config;
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 0 || c.head_dim <= 0 ||
      c.head_dim % 2 != 0 || c.num_heads % c.num_kv_heads != 0 || !(c.rms_norm_eps > 0) || !(c.rope_theta > 0) ||
      !std::isfinite(c.rms_norm_eps) || !std::isfinite(c.rope_theta)) {
    std::fprintf(stderr, "ParseModelConfig accepted an unusable config\n");
    std::abort();
  }
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  CheckTokenId(j, "bos_token_id", c.bos_token_id);
  CheckTokenId(j, "eos_token_id", c.eos_token_id);
  auto again = tpserve::ParseModelConfig(tpserve::ModelConfigToJson(c));
  if (!again.ok()) {
    std::fprintf(stderr, "ModelConfigToJson output does not parse: %s\n", again.status().ToString().c_str());
    std::abort();
  }
  if (again->hidden_size != c.hidden_size || again->num_layers != c.num_layers || again->head_dim != c.head_dim ||
      again->num_kv_heads != c.num_kv_heads || again->vocab_size != c.vocab_size) {
    std::fprintf(stderr, "ModelConfigToJson round trip changed the shape\n");
    std::abort();
  }
  return 0;
}
