// See rope_table.h.
#include "kernels/rope_table.h"

#include <cmath>
#include <cstddef>

namespace tpserve::kernels {

std::vector<float> RopeCosSinTable(float theta, int head_dim, int positions) {
  const int half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(exponent)));
  }
  std::vector<float> table(static_cast<size_t>(positions) * half * 2);
  for (int pos = 0; pos < positions; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq[i];  // one float multiply, as the reference
      const size_t e = (static_cast<size_t>(pos) * half + i) * 2;
      table[e] = static_cast<float>(std::cos(static_cast<double>(angle)));
      table[e + 1] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return table;
}

}  // namespace tpserve::kernels
