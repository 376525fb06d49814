// The bf16 pair-panel layout's repack and x packing (layout in bf16_pair_panels.h).
#include "kernels/cpu/bf16_pair_panels.h"

#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {

void RepackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch) {
  const int64_t pairs = k / 2;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t c0 = p * kPairPanelCols;
    const int64_t r = n - c0 < kPairPanelCols ? n - c0 : kPairPanelCols;
    uint16_t* panel = w + c0 * k;
    std::memcpy(scratch, panel, static_cast<size_t>(r * k) * 2);
    for (int64_t q = 0; q < pairs; ++q) {
      uint16_t* dst = panel + q * 2 * r;
      for (int64_t j = 0; j < r; ++j) {
        dst[2 * j] = scratch[j * k + 2 * q];
        dst[2 * j + 1] = scratch[j * k + 2 * q + 1];
      }
    }
    if (k % 2 != 0) {
      uint16_t* dst = panel + pairs * 2 * r;
      for (int64_t j = 0; j < r; ++j) dst[j] = scratch[j * k + k - 1];
    }
  }
}

void UnpackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch) {
  const int64_t pairs = k / 2;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t c0 = p * kPairPanelCols;
    const int64_t r = n - c0 < kPairPanelCols ? n - c0 : kPairPanelCols;
    uint16_t* panel = w + c0 * k;
    std::memcpy(scratch, panel, static_cast<size_t>(r * k) * 2);
    for (int64_t q = 0; q < pairs; ++q) {
      const uint16_t* src = scratch + q * 2 * r;
      for (int64_t j = 0; j < r; ++j) {
        panel[j * k + 2 * q] = src[2 * j];
        panel[j * k + 2 * q + 1] = src[2 * j + 1];
      }
    }
    if (k % 2 != 0) {
      for (int64_t j = 0; j < r; ++j) panel[j * k + k - 1] = scratch[pairs * 2 * r + j];
    }
  }
}

void PackXPairsBlock(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out) {
  const int64_t pairs = PairCount(k);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out + block * 16 * PackXCols(k));
  for (int64_t i = 0; i < 16; ++i) {
    const int64_t t = block * 16 + i;
    if (t >= m) {
      for (int64_t q = 0; q < pairs; ++q) dst[q * 16 + i] = 0;
      continue;
    }
    const uint16_t* row = xb + t * k;
    for (int64_t q = 0; q < k / 2; ++q) {
      dst[q * 16 + i] = static_cast<uint32_t>(row[2 * q]) | static_cast<uint32_t>(row[2 * q + 1]) << 16;
    }
    if (k % 2 != 0) dst[(pairs - 1) * 16 + i] = row[k - 1];
  }
}

}  // namespace tpserve::kernels::cpu
