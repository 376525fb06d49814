// Element types of weights and their conversions. Activations are float32; weights keep their stored
// dtype in memory (bf16 stays bf16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tpserve {

// kI8 is never a checkpoint dtype: it is the in-memory format of weights quantized at load time
// (--quantization int8, worker/model/int8_quantize.h): symmetric int8 with one float32 scale per output
// row, carried beside the data (kernels::WeightView::scales).
enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI8 = 3 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : t == DType::kI8 ? 1 : 2; }
const char* DTypeName(DType t);  // "float32", "bfloat16", "float16", "int8"
// Accepts HF names ("float32", "bfloat16", "float16") and safetensors names ("F32", "BF16", "F16").
absl::StatusOr<DType> ParseDType(absl::string_view name);

inline float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN stays NaN (as torch does).
inline uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7fffu + lsb;
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts n elements of `src_type` to float32 (kI8: the integer values, unscaled).
void ConvertToF32(const void* src, DType src_type, size_t n, float* dst);

}  // namespace tpserve
