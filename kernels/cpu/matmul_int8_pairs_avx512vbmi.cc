// int8 pair-panel matmul for CPUs with AVX512-VBMI (Zen 4/5, Ice Lake, Sapphire Rapids and later): the
// weight-stationary vdpbf16ps tiles of pair_tiles_avx512_bf16.h over weights in kInt8PairBlocks
// (bf16_pair_panels.h), with a cheaper widening. Built with -mavx512vbmi (kernels/CMakeLists.txt) and only
// reached when the backend found VBMI at runtime (cpu_backend.cc packs kInt8PairBlocks only then).
//
// Why: int8 decode on the plain int8 panels was bound by the widening, not by memory (docs/PERFORMANCE.md,
// "8-bit weights on the quiet machine"): 32 weights took vpmovsxbd x 2, vcvtdq2ps x 2 and vpermt2w. Here 64
// weights (two pairs of a panel: one 64-byte load) take five instructions: two vpermi2b lookups of |q| in
// 128-entry tables give the low and high bytes of bf16(|q|), one vpternlogd ORs the sign bit into the high
// bytes, and vpunpcklbw / vpunpckhbw interleave them into the two pairs' 32 bf16 each (the block layout puts
// each pair's bytes where the per-lane unpacks expect them).
//
// Arithmetic: the same bf16(q) values as the plain int8 panels (exact: |q| <= 127), fed to the same tiles in
// the same order per accumulator, so the results are bitwise those of matmul_avx512_bf16_pairs.cc on the
// plain layout, for every m (prefill widens through the same lookups into the tile scratch).
#include <cstdint>

#include "kernels/cpu/pair_tiles_avx512_bf16.h"

namespace tpserve::kernels::cpu {
namespace {

// Byte `high` (0: low, 1: high) of bf16(i) for i = 0..127: the top half of float32(i), exact.
struct Bf16ByteTable {
  alignas(64) uint8_t bytes[128];
};
constexpr Bf16ByteTable MakeTable(int high) {
  Bf16ByteTable t{};
  for (int i = 1; i < 128; ++i) {
    int e = 0;
    while ((i >> (e + 1)) != 0) ++e;
    const uint32_t bits = static_cast<uint32_t>(127 + e) << 23 | (static_cast<uint32_t>(i) << (23 - e) & 0x7fffffu);
    t.bytes[i] = static_cast<uint8_t>(bits >> (16 + 8 * high));
  }
  return t;
}
constexpr Bf16ByteTable kLowBytes = MakeTable(0);
constexpr Bf16ByteTable kHighBytes = MakeTable(1);
static_assert(kHighBytes.bytes[1] == 0x3f && kLowBytes.bytes[1] == 0x80, "bf16(1) = 0x3f80");
static_assert(kHighBytes.bytes[127] == 0x42 && kLowBytes.bytes[127] == 0xfe, "bf16(127) = 0x42fe");

struct VbmiInt8Weights : Int8Weights {  // lone pairs, tails and narrow panels: the plain int8 bytes
  static constexpr bool kBlocks = true;
  // The 64 bytes of a block at p -> pair 2b in *w0, pair 2b + 1 in *w1 (32 bf16 each, panel order).
  static void Pair2(const int8_t* p, __m512bh* w0, __m512bh* w1) {
    const __m512i v = _mm512_loadu_si512(p);
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(kLowBytes.bytes), v,
                                                _mm512_load_si512(kLowBytes.bytes + 64));
    const __m512i hi_abs = _mm512_permutex2var_epi8(_mm512_load_si512(kHighBytes.bytes), v,
                                                    _mm512_load_si512(kHighBytes.bytes + 64));
    // hi = hi_abs | (v & 0x80): 0xF8 is A | (B & C) for (A, B, C) = (hi_abs, v, 0x80 bytes).
    const __m512i hi = _mm512_ternarylogic_epi32(hi_abs, v, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
    *w0 = (__m512bh)_mm512_unpacklo_epi8(lo, hi);
    *w1 = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
  }
};

// WidenFn of kInt8PairBlocks: full panels block by block, then their plain rest (lone pair, tail), and a
// narrow last panel as plain int8 panels.
void WidenInt8Blocks(const int8_t* src, int64_t cols, int64_t k, uint16_t* dst) {
  const int64_t panel = kPairPanelCols * k, blocked = 64 * ((k / 2) / 2);
  int64_t c = 0;
  for (; c + kPairPanelCols <= cols; c += kPairPanelCols) {
    const int8_t* s = src + c * k;
    uint16_t* d = dst + c * k;
    for (int64_t i = 0; i < blocked; i += 64) {
      __m512bh w0, w1;
      VbmiInt8Weights::Pair2(s + i, &w0, &w1);
      _mm512_storeu_si512(d + i, (__m512i)w0);
      _mm512_storeu_si512(d + i + 32, (__m512i)w1);
    }
    WidenInt8(s + blocked, panel - blocked, d + blocked);
  }
  if (c < cols) WidenInt8(src + c * k, (cols - c) * k, dst + c * k);
}

}  // namespace

void MatmulInt8PairsVbmi(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  // As MatmulAvx512Bf16Pairs for int8: widened in registers up to one group, per tile and chunk beyond.
  if (job.m <= kGroup) return RunPairs<VbmiInt8Weights>(job, n_begin, n_end, /*widen=*/nullptr);
  RunPairs<Bf16Weights>(job, n_begin, n_end, &WidenInt8Blocks);
}

}  // namespace tpserve::kernels::cpu
