// Writes a state-dict pickle the way torch.save does (protocol 2): an OrderedDict-free plain dict of
// name -> torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict()).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace tpserve::checkpoint {

struct PickledTensorSpec {
  std::string name;
  DType dtype = DType::kF32;       // picks torch.{Float,BFloat16,Half}Storage
  std::string storage_key;         // the zip entry ARCHIVE/data/<storage_key>
  int64_t storage_numel = 0;       // elements in the storage
  int64_t storage_offset = 0;      // in elements
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;    // in elements
};

// The data.pkl bytes for TENSORS, in order.
std::string PickleStateDict(const std::vector<PickledTensorSpec>& tensors);

}  // namespace tpserve::checkpoint
