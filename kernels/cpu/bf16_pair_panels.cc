// The bf16 pair-panel layout's repack and x packing (layout in bf16_pair_panels.h).
#include "kernels/cpu/bf16_pair_panels.h"

#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {

namespace {

// Moves panels [panel_begin, panel_end) between row-major (row j of a panel at j * k) and the pair-panel
// layout, in place through scratch: to_panels picks the direction. E: the element (bf16 bits or int8).
template <class E>
void PermutePanels(E* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end, E* scratch,
                   bool to_panels) {
  const int64_t pairs = k / 2;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t c0 = p * kPairPanelCols;
    const int64_t r = n - c0 < kPairPanelCols ? n - c0 : kPairPanelCols;
    E* panel = w + c0 * k;
    std::memcpy(scratch, panel, static_cast<size_t>(r * k) * sizeof(E));
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t e = 0; e < k; ++e) {
        // Element e of column j: pair e / 2, half e % 2; the odd-k last element after all pairs.
        const int64_t at = e < pairs * 2 ? (e / 2) * 2 * r + 2 * j + e % 2 : pairs * 2 * r + j;
        if (to_panels) {
          panel[at] = scratch[j * k + e];
        } else {
          panel[j * k + e] = scratch[at];
        }
      }
    }
  }
}

// Where byte i of a plain 2-pair block (pair 2b at 0..31, pair 2b + 1 at 32..63) sits in its
// kInt8PairBlocks block (bf16_pair_panels.h).
struct BlockOrder {
  uint8_t at[64];
};
constexpr BlockOrder MakeBlockOrder() {
  BlockOrder o{};
  for (int i = 0; i < 64; ++i) o.at[i] = static_cast<uint8_t>((i % 32 / 8) * 16 + 8 * (i / 32) + i % 8);
  return o;
}
constexpr BlockOrder kBlockOrder = MakeBlockOrder();

// Two's complement <-> sign-magnitude byte (-128 has no sign-magnitude form: never passed here). Without
// branches: weight signs are random, and a mispredicted branch per byte made the repack ~4 s of a 1 GB load.
inline uint8_t ToSignMagnitude(int8_t q) {
  const int neg = q >> 7;  // 0 or -1
  return static_cast<uint8_t>((((q ^ neg) - neg) & 0x7f) | (neg & 0x80));
}
inline int8_t FromSignMagnitude(uint8_t s) {
  const int neg = -(s >> 7);
  return static_cast<int8_t>(((s & 0x7f) ^ neg) - neg);
}

// Moves the 2-pair blocks of the full panels in [panel_begin, panel_end) between kInt8PairPanels and
// kInt8PairBlocks (bf16_pair_panels.h) in place: to_blocks picks the direction.
void PermutePairBlocks(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end, bool to_blocks) {
  const int64_t blocks = (k / 2) / 2;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    if (n - p * kPairPanelCols < kPairPanelCols) continue;  // a narrow panel keeps its bytes
    int8_t* panel = w + p * kPairPanelCols * k;
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* block = reinterpret_cast<uint8_t*>(panel + 64 * b);
      uint8_t out[64];
      if (to_blocks) {
        for (int i = 0; i < 64; ++i) out[kBlockOrder.at[i]] = ToSignMagnitude(static_cast<int8_t>(block[i]));
      } else {
        for (int i = 0; i < 64; ++i) out[i] = static_cast<uint8_t>(FromSignMagnitude(block[kBlockOrder.at[i]]));
      }
      std::memcpy(block, out, sizeof(out));
    }
  }
}

}  // namespace

void RepackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch) {
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/true);
}

void UnpackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch) {
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/false);
}

void RepackInt8PairPanels(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch) {
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/true);
}

void UnpackInt8PairPanels(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch) {
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/false);
}

bool Int8FitsPairBlocks(const int8_t* w, int64_t count) {
  bool min_seen = false;  // no early exit: the loop vectorizes (this scans every weight at load)
  for (int64_t i = 0; i < count; ++i) min_seen |= w[i] == -128;
  return !min_seen;
}

void RepackInt8PairBlocks(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch) {
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/true);
  PermutePairBlocks(w, n, k, panel_begin, panel_end, /*to_blocks=*/true);
}

void UnpackInt8PairBlocks(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch) {
  PermutePairBlocks(w, n, k, panel_begin, panel_end, /*to_blocks=*/false);
  PermutePanels(w, n, k, panel_begin, panel_end, scratch, /*to_panels=*/false);
}

void PackXPairsBlock(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out) {
  const int64_t pairs = PairCount(k), stride = PairXStride(m);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out + block * 16 * PackXCols(k));
  for (int64_t i = 0; i < 16 && block * 16 + i < m; ++i) {
    const uint16_t* row = xb + (block * 16 + i) * k;
    for (int64_t q = 0; q < k / 2; ++q) {
      dst[q * stride + i] = static_cast<uint32_t>(row[2 * q]) | static_cast<uint32_t>(row[2 * q + 1]) << 16;
    }
    if (k % 2 != 0) dst[(pairs - 1) * stride + i] = row[k - 1];
  }
}

}  // namespace tpserve::kernels::cpu
