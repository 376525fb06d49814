// The bf16 "pair panel" weight layout that the avx512-bf16 backend repacks matmul weights into once at load
// (Backend::PackMatmulWeight), and the matching x packing. Portable code: the layout is plain data.
//
// A weight [n, k] (row-major, Hugging Face [out, in]) becomes ceil(n / 16) panels of 16 output columns.
// Panel p holds columns c0 = 16 p .. c0 + r - 1 (r = min(16, n - c0): only the last panel may be narrower)
// and starts at element c0 * k, i.e. exactly where its rows started before, so the repack is in place and
// the buffer keeps its size (no resident memory is added). Inside a panel:
//   pair q < k / 2:  elements [q * 2r, q * 2r + 2r): column j's (W[c0 + j, 2q], W[c0 + j, 2q + 1]) at 2j
//   k odd:           elements [(k / 2) * 2r, + r):   column j's W[c0 + j, k - 1] at j
// so one 64-byte load of pair q is the vdpbf16ps operand for 16 output columns: no horizontal sums.
//
// x for that kernel: groups of 16 tokens, each [PairCount(k)][S][2 bf16] (as uint32 pairs: one 32-bit
// broadcast per token and pair), the odd-k tail pair (x[k - 1], 0), S = PairXStride(m): 16, or m when all
// of x is one short group (decode: one token's pairs stay contiguous instead of one per cache line).
// Slots of tokens past m are not written (the tiles read only a group's tokens). Group g starts at
// out + g * 16 * PackXCols(k) (the slot size of CpuKernels::pack_x_block).
#pragma once

#include <cstdint>

namespace tpserve::kernels::cpu {

constexpr int kPairPanelCols = 16;

inline int64_t PairCount(int64_t k) { return (k + 1) / 2; }
inline int64_t PairXStride(int64_t m) { return m < kPairPanelCols ? m : kPairPanelCols; }

// Repacks panels [panel_begin, panel_end) of the row-major bf16 weight w [n, k] in place.
// scratch: >= kPairPanelCols * k elements, this caller's own.
void RepackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch);

// The inverse (tests, debugging): panel layout back to row-major, in place.
void UnpackBf16PairPanels(uint16_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          uint16_t* scratch);

// The same layout for int8 weights (--quantization int8; WeightLayout::kInt8PairPanels): element for
// element as above, one byte each, so panel p starts at byte c0 * k and pair q of a full panel is 32 bytes
// (16 columns x 2). The per-row scales stay a separate [n] float array, untouched. The avx512-bf16 matmul
// widens those bytes to bf16 in registers (exact: |q| <= 127) and scales each finished column.
void RepackInt8PairPanels(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch);
void UnpackInt8PairPanels(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch);

// kInt8PairBlocks (CPUs with AVX512-VBMI): the int8 pair panels above, then inside every full panel
// (16 columns) each block of two pairs (2b, 2b + 1) for b < (k / 2) / 2, the 64 bytes at byte 64 b of the
// panel, is reordered and re-encoded:
//   pair 2b's byte e (0..31) at (e / 8) * 16 + e % 8, pair 2b + 1's byte e at (e / 8) * 16 + 8 + e % 8
//   (what vpunpcklbw / vpunpckhbw undo in each 128-bit lane), every byte sign-magnitude: bit 7 the sign,
//   bits 0-6 |q|, so one 128-entry vpermi2b lookup of the magnitude gives either byte of bf16(|q|).
// A lone last pair (k / 2 odd), the odd-k tail and a narrow last panel keep kInt8PairPanels' bytes.
// Sign-magnitude has no -128: only weights with Int8FitsPairBlocks take this layout (the quantizer's
// symmetric scales never produce -128).
bool Int8FitsPairBlocks(const int8_t* w, int64_t count);
void RepackInt8PairBlocks(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch);
void UnpackInt8PairBlocks(int8_t* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end,
                          int8_t* scratch);

// Token group `block` (rows [16 block, 16 block + 16) of xb [m, k]) into its slot of out (layout above).
void PackXPairsBlock(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out);

}  // namespace tpserve::kernels::cpu
