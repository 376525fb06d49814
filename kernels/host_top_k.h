// The host implementation of Backend::TopK (host backends use it as is; the CUDA kernel in
// kernels/cuda/topk_kernels.cu follows the same rules and is checked against it). Header-only so that
// Backend's inline default needs no library.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace tpserve::kernels {

// For each row r of logits laid out as `parts` x [rows, part_len] (the TP all-gather layout; parts = 1 for
// one rank; ids >= vocab are padding): ids/values [rows, k] the k largest logits, descending, ties -> lower
// id, NaN counted as -inf; lse [rows] = log(sum(exp(logits[r, :]))) in float64, -inf when nothing is finite.
// Requires 1 <= k <= vocab <= parts * part_len.
inline void HostTopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k,
                     int32_t* ids, float* values, float* lse) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<float> row(static_cast<size_t>(vocab));
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t id = 0; id < vocab; ++id) {
      const float x = logits[((id / part_len) * rows + r) * part_len + id % part_len];
      row[id] = std::isnan(x) ? kNegInf : x;
    }
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int j = 0; j < k; ++j) {
      ids[r * k + j] = idx[j];
      values[r * k + j] = row[idx[j]];
    }
    const double mx = row[idx[0]];
    double sum = 0;
    if (mx != -std::numeric_limits<double>::infinity()) {
      for (float x : row) sum += std::exp(static_cast<double>(x) - mx);
    }
    lse[r] = mx == -std::numeric_limits<double>::infinity() ? kNegInf : static_cast<float>(mx + std::log(sum));
  }
}

}  // namespace tpserve::kernels
