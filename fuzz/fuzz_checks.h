// Invariants the fuzz targets check on what a parser accepted: every tensor it hands back lies inside
// the file image (so Slice/Copy can never read past the mapping).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/dtype.h"
#include "worker/checkpoint/checkpoint.h"

namespace tpserve::fuzz {

// Aborts (a libFuzzer crash) when a tensor's [first, last] byte falls outside [image, image + size), and
// reads both bytes so ASan also sees them.
inline void CheckTensorsInside(const std::vector<checkpoint::TensorInfo>& tensors, const uint8_t* image,
                               size_t size) {
  for (const checkpoint::TensorInfo& t : tensors) {
    if (t.shape.size() != t.strides.size()) {
      std::fprintf(stderr, "tensor %s: %zu dims but %zu strides\n", t.name.c_str(), t.shape.size(),
                   t.strides.size());
      std::abort();
    }
    bool empty = false;
    __int128 last = 0;  // element offset of the last element; strides are in elements
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] < 0 || t.strides[i] < 0) {
        std::fprintf(stderr, "tensor %s: negative shape or stride in dim %zu\n", t.name.c_str(), i);
        std::abort();
      }
      if (t.shape[i] == 0) empty = true;
      else last += static_cast<__int128>(t.shape[i] - 1) * t.strides[i];
    }
    if (empty) continue;
    const __int128 begin = t.data - image;
    const __int128 end = begin + (last + 1) * static_cast<__int128>(DTypeSize(t.dtype));  // exclusive
    if (t.data == nullptr || begin < 0 || end > static_cast<__int128>(size)) {
      std::fprintf(stderr, "tensor %s: bytes [%lld, %lld) outside the %zu-byte file\n", t.name.c_str(),
                   static_cast<long long>(begin), static_cast<long long>(end), size);
      std::abort();
    }
    volatile uint8_t sink = image[static_cast<size_t>(begin)];
    sink = image[static_cast<size_t>(end) - 1];
    (void)sink;
  }
}

}  // namespace tpserve::fuzz
