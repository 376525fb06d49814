// A restricted unpickler for the pickles torch.save writes (protocol 2; a few protocol 4 framing
// opcodes tolerated). It builds plain values and executes nothing: the only callables it knows are
// collections.OrderedDict() and torch._utils._rebuild_tensor_v2(...), the only persistent ids are
// ('storage', torch.{Float,BFloat16,Half}Storage, key, location, numel). Any other global is refused
// by name before anything else happens. Stack, memo and value counts are bounded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace tpserve::checkpoint {

struct PickleValue {
  enum class Kind { kNone, kBool, kInt, kString, kTuple, kList, kDict, kGlobal, kStorage, kTensor };
  enum class Global { kNone, kOrderedDict, kRebuildTensorV2, kFloatStorage, kBFloat16Storage, kHalfStorage };

  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  std::string str;                                              // kString; kStorage: key
  std::vector<PickleValue*> items;                              // kTuple, kList
  std::vector<std::pair<PickleValue*, PickleValue*>> entries;  // kDict, insertion order
  Global global = Global::kNone;                                // kGlobal
  // kStorage: dtype, str = key, integer = numel. kTensor: the storage, offset, shape, strides.
  DType dtype = DType::kF32;
  const PickleValue* storage = nullptr;
  int64_t storage_offset = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

// Owns every value the pickle created (values may share children or even form cycles).
struct UnpickledObject {
  std::vector<std::unique_ptr<PickleValue>> arena;
  const PickleValue* root = nullptr;
};

// Runs BYTES (a data.pkl) through the restricted machine. FILE only names the pickle in messages:
// "pickle in FILE references forbidden global 'os system'". Unknown opcodes, truncation, type errors
// and exceeded bounds are INVALID_ARGUMENT too.
absl::StatusOr<std::unique_ptr<UnpickledObject>> Unpickle(absl::string_view bytes, const std::string& file);

}  // namespace tpserve::checkpoint
