// The copy kernel behind Checkpoint::ReadSlice: a strided 2-D view of a mapped tensor into a
// contiguous row-major buffer, converting dtype on the way.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace tpserve::checkpoint {

// A [rows, cols] view; strides are in elements of src_dtype.
struct StridedView {
  const uint8_t* src = nullptr;
  DType src_dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
};

// Writes rows * cols elements of DST_DTYPE to DST ([rows, cols] contiguous). Contiguous rows of the
// same dtype are one memcpy each; large copies are split over threads so a multi-GB slice runs near
// memory bandwidth (page faults of the mapping included).
void CopyStridedView(const StridedView& view, DType dst_dtype, void* dst);

}  // namespace tpserve::checkpoint
