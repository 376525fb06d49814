// One PyTorch zip checkpoint file (torch.save of a state dict): ARCHIVE/data.pkl describes the tensors,
// ARCHIVE/data/<key> holds each storage's raw little-endian bytes.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/mapped_file.h"

namespace tpserve::checkpoint {

// Parses FILE's zip directory and its data.pkl with the restricted unpickler, and returns one
// TensorInfo per state-dict entry, pointing into FILE's mapping (strides as pickled, storage offset
// applied). Every view is checked to fit inside its storage entry. Errors are INVALID_ARGUMENT naming
// the file and tensor.
absl::StatusOr<std::vector<TensorInfo>> ParseTorchZip(const MappedFile& file);

}  // namespace tpserve::checkpoint
