// Shape arithmetic shared by the checkpoint parsers: overflow-checked element counts, contiguous
// strides and the storage extent of a strided view.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpserve::checkpoint {

// numel of SHAPE; false when it (or numel * elem_size) overflows int64 or a dimension is negative.
bool CheckedNumel(const std::vector<int64_t>& shape, size_t elem_size, int64_t* numel);
// Row-major strides in elements.
std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape);
// Elements of storage a view spans from its offset: 1 + sum((size_i - 1) * stride_i), 0 for an empty
// view. False on overflow or a negative stride.
bool CheckedExtent(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, int64_t* extent);
// "[512, 64]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace tpserve::checkpoint
