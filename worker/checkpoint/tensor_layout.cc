// Overflow-checked shape arithmetic (hostile headers may carry any integers).
#include "worker/checkpoint/tensor_layout.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tpserve::checkpoint {

bool CheckedNumel(const std::vector<int64_t>& shape, size_t elem_size, int64_t* numel) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return false;
    n *= d;
  }
  if (n > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(elem_size)) return false;
  *numel = n;
  return true;
}

std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

bool CheckedExtent(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, int64_t* extent) {
  if (shape.size() != strides.size()) return false;
  int64_t last = 0;  // offset of the last element
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || strides[i] < 0) return false;
    if (shape[i] == 0) {
      *extent = 0;
      return true;
    }
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t span = shape[i] - 1;
    if (span != 0 && strides[i] > std::numeric_limits<int64_t>::max() / span) return false;
    if (last > std::numeric_limits<int64_t>::max() - span * strides[i]) return false;
    last += span * strides[i];
  }
  if (last == std::numeric_limits<int64_t>::max()) return false;
  *extent = last + 1;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace tpserve::checkpoint
