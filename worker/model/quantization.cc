// --quantization parsing and the int8 row quantizer (see quantization.h).
#include "worker/model/quantization.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace tpserve::model {

absl::StatusOr<WeightQuantization> ParseWeightQuantization(absl::string_view name) {
  if (name.empty() || name == "none") return WeightQuantization::kNone;
  if (name == "int8") return WeightQuantization::kInt8;
  return absl::InvalidArgumentError(absl::StrCat(
      "--quantization '", name,
      "' is not supported: expected none or int8 (weight-only, per-channel int8; see docs/QUANTIZATION.md)"));
}

const char* WeightQuantizationName(WeightQuantization q) {
  return q == WeightQuantization::kInt8 ? "int8" : "none";
}

void QuantizeRowsInt8(const float* src, int64_t rows, int64_t src_cols, int64_t c0, int64_t c1, int8_t* dst,
                      float* scales) {
  const int64_t width = c1 - c0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * src_cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < src_cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    scales[r] = d;
    int8_t* out = dst + r * width;
    for (int64_t c = 0; c < width; ++c) {
      const float v = std::round(row[c0 + c] * id);
      out[c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

}  // namespace tpserve::model
