// libFuzzer target: config.json text through ParseModelConfig; what it accepts must be a usable shape
// (positive sizes, even head_dim, whole GQA groups) and must survive a ModelConfigToJson round trip.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "common/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = tpserve::ParseModelConfig(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) return 0;
  const tpserve::ModelConfig& c = *config;
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 0 || c.head_dim <= 0 ||
      c.head_dim % 2 != 0 || c.num_heads % c.num_kv_heads != 0 || !(c.rms_norm_eps > 0) || !(c.rope_theta > 0)) {
    std::fprintf(stderr, "ParseModelConfig accepted an unusable config\n");
    std::abort();
  }
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
