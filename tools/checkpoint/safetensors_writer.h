// The header of a .safetensors file whose tensors are laid out back to back in the given order, so
// callers can stream the data after it without holding it in memory.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace tpserve::checkpoint {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// 8-byte little-endian length + JSON header padded with spaces to a multiple of 8 bytes (so the data
// section, and every tensor in it, stays aligned). METADATA goes to "__metadata__".
std::string SafetensorsHeader(const std::vector<SafetensorsEntry>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace tpserve::checkpoint
