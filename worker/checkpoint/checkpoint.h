// Read-only access to a Hugging Face checkpoint directory, memory-mapped, in either format:
//  - safetensors: model.safetensors, or model.safetensors.index.json + shards (F32, BF16, F16);
//  - PyTorch zip: pytorch_model.bin, or pytorch_model.bin.index.json + shards. The pickle is parsed by a
//    restricted reader that accepts only OrderedDict, torch._utils._rebuild_tensor_v2 and
//    Float/BFloat16/Half storages; it executes nothing and refuses any other global by name.
// Extra tensors (rotary_emb.inv_freq) are indexed but never required.
// Thread-safety: const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace tpserve::checkpoint {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements; row-major contiguous for safetensors
  const uint8_t* data = nullptr; // element [0, 0, ...] inside a mapped file (storage offset applied)
  std::string file;              // the shard that holds it
};

class Checkpoint {
 public:
  virtual ~Checkpoint() = default;

  // Opens DIR, detecting the format (safetensors preferred when both exist). Every header, index and
  // pickle is validated here: truncation, offsets past the end, overlapping or misaligned data and
  // unknown globals are INVALID_ARGUMENT errors naming the file and tensor.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  virtual std::string format() const = 0;  // "safetensors" or "pytorch"
  virtual std::vector<std::string> TensorNames() const = 0;
  // NOT_FOUND naming the tensor and the directory when absent.
  virtual absl::StatusOr<const TensorInfo*> Get(absl::string_view name) const = 0;

  // Copies rows [begin, end) (dim = 0) or columns [begin, end) (dim = 1) of a 1-D or 2-D tensor into
  // `dst` as `out_dtype` (converting when it differs), row-major contiguous, honouring strides.
  // First checks the tensor's full shape equals `expected_shape`: a mismatch is INVALID_ARGUMENT naming
  // the tensor, the expected and the actual shape. A 1-D tensor only takes dim = 0.
  // Touches only the pages that hold the slice, so a worker's resident weights stay ~1/N.
  virtual absl::Status ReadSlice(absl::string_view name, const std::vector<int64_t>& expected_shape,
                                 int dim, int64_t begin, int64_t end, DType out_dtype,
                                 void* dst) const = 0;
};

}  // namespace tpserve::checkpoint
