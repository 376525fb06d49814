// Parser for one .safetensors file: 8-byte little-endian header length, JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw data section.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/mapped_file.h"

namespace tpserve::checkpoint {

// Validates the whole header against FILE (header length within the file, JSON well-formed, dtype
// F32/BF16/F16, numel without overflow, offsets inside the data section, end - begin == numel * size,
// element-aligned and non-overlapping) and returns one TensorInfo per tensor, pointing into FILE's
// mapping (row-major contiguous strides). Errors are INVALID_ARGUMENT naming the file and tensor.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(const MappedFile& file);

}  // namespace tpserve::checkpoint
