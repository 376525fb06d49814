// The weight-stationary vdpbf16ps pair-panel tiles and their driver (RunPairs), shared by the bf16 / int8
// kernel (matmul_avx512_bf16_pairs.cc, why the layout and the arithmetic contract are in its header) and the
// AVX512-VBMI int8 kernel (matmul_int8_pairs_avx512vbmi.cc), which plugs its own weight loader into the same
// tiles. Include only from AVX-512 translation units (kernels/CMakeLists.txt *avx512* glob).
//
// Everything here is in an anonymous namespace on purpose: the including files are compiled with different
// ISA flags (-mavx512vbmi or not), so an instantiation shared across them (the linker keeps one copy of each
// inline template) could run VBMI instructions on a CPU without them.
#pragma once

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "kernels/cpu/bf16_pair_panels.h"
#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {
namespace {  // NOLINT(build/namespaces): see above


constexpr int kGroup = 16;                  // tokens per packed x group
constexpr int kMaxPanels = 4;               // panel streams of the widest tile (T <= 3)
constexpr int64_t kXChunkBytes = 2 << 20;  // packed x of the groups that share one pass over the weights
// Software prefetch distance within each panel stream (0: none). Tiles of >= 4 tokens: at 16 tokens one
// core both computes and streams at its limit (64 bytes of weights per 8 cycles of vdpbf16ps); the hardware
// prefetcher alone left the two serialised (0.58 ms for 2048x2048 on one Zen 5 core), 1 KiB ahead changed
// nothing, 8 KiB ahead overlapped them (0.30-0.34 ms). Decode tiles (< 4 tokens) are pure streaming over 4
// panels: the weight loader decides (WL::kDecodePrefetchBytes; measured per dtype, docs/PERFORMANCE.md).
template <class WL, int T>
constexpr int64_t PrefetchBytesFor() {
  return T >= 4 ? 8192 : WL::kDecodePrefetchBytes;
}

// Panels per tile for T tokens: enough independent accumulators (T * P >= 12) to cover vdpbf16ps latency at
// two per cycle, within 32 zmm registers (T * P accumulators + P weights + a broadcast). Decode (T <= 3)
// is memory-bound: 4 panel streams kept it at the bandwidth, 12 were slower (more streams to follow).
constexpr int PanelsFor(int t) { return t >= 12 ? 1 : t >= 6 ? 2 : t >= 4 ? 3 : 4; }

struct PairTileArgs {
  const uint32_t* x;   // the group: pair q of token t at x[q * xstride + t] (PairXStride)
  int64_t xstride;
  const void* w;       // the tile's first panel (bf16, or int8 for the Int8Weights tiles)
  int64_t panel_elems;  // 16 * k: panel p of the tile at w + p * panel_elems elements
  int64_t k;
  int r;               // columns of the tile's panels (16, or fewer in a last, narrow panel with P = 1)
  float* y;            // y[t0, c0]
  int64_t ldy;
  const float* scales;  // int8 weights: the tile's first column's scale (y = scale * dot); nullptr: none
};

// How a tile reads its weights: the 32 bf16 (16 columns x one pair) at element `at` of a panel, r columns
// of them (r < 16 only when kNarrow), and the odd-k tail's r (W, 0) pairs.
struct Bf16Weights {
  using Elem = uint16_t;
  static constexpr bool kBlocks = false;  // no Pair2: one pair per load
  // Decode reads bf16 at the bandwidth with the hardware prefetcher alone: 2 KiB ahead made the m = 1
  // kernel 5-10% slower on Zen 5.
  static constexpr int64_t kDecodePrefetchBytes = 0;
  template <bool kNarrow>
  static __m512bh Pair(const uint16_t* p, int r) {
    if (!kNarrow) return (__m512bh)_mm512_loadu_si512(p);
    return (__m512bh)_mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << (2 * r)) - 1), p);
  }
  static __m512bh Tail(const uint16_t* p, int r) {
    return (__m512bh)_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << r) - 1), p));
  }
};

// int8 weights widened to bf16 in registers: sign-extend, convert to float32 and round to bf16, all exact
// for |q| <= 127 (7 significant bits), so the tile's arithmetic is that of the bf16 tile over the widened
// weights (which the m > 16 path below feeds it from a scratch: the same bits either way).
struct Int8Weights {
  using Elem = int8_t;
  static constexpr bool kBlocks = false;
  // Widening between the loads left the hardware prefetcher behind at m = 1 (65-90% of the read
  // bandwidth); 2 KiB ahead in each of the 4 panel streams made the kernel 8-12% faster on Zen 5.
  static constexpr int64_t kDecodePrefetchBytes = 2048;
  static __m512 Widen16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
  // 32 int8 -> 32 bf16 in their order.
  static __m512bh Widen32(__m256i b) {
    return _mm512_cvtne2ps_pbh(Widen16(_mm256_extracti128_si256(b, 1)), Widen16(_mm256_castsi256_si128(b)));
  }
  template <bool kNarrow>
  static __m512bh Pair(const int8_t* p, int r) {
    if (!kNarrow) {
      // float(q) has at most 7 significant bits, so its high half is bf16(q) exactly: gather those (one
      // vpermt2w measured 0-5% faster at m = 1 than vcvtne2ps2bf16 on Zen 5; same bits).
      const __m512i hi_halves = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                                 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
      return (__m512bh)_mm512_permutex2var_epi16(
          _mm512_castps_si512(Widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))), hi_halves,
          _mm512_castps_si512(Widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))));
    }
    return Widen32(_mm256_maskz_loadu_epi8(static_cast<__mmask32>((uint64_t{1} << (2 * r)) - 1), p));
  }
  static __m512bh Tail(const int8_t* p, int r) {
    const __m256bh h = _mm512_cvtneps_pbh(Widen16(_mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << r) - 1), p)));
    return (__m512bh)_mm512_cvtepu16_epi32((__m256i)h);
  }
};

// T tokens x P panels. kNarrow: one panel of a.r < 16 columns (masked loads and stores). WL: Bf16Weights
// or Int8Weights.
template <class WL, int T, int P, bool kNarrow>
void PairTile(const PairTileArgs& a) {
  using Elem = typename WL::Elem;
  const int64_t pairs = a.k / 2;
  const int r = kNarrow ? a.r : 16;
  __m512 acc[T][P];
  for (int t = 0; t < T; ++t)
    for (int p = 0; p < P; ++p) acc[t][p] = _mm512_setzero_ps();
  const uint32_t* x = a.x;
  const Elem* w = static_cast<const Elem*>(a.w);
  int64_t q = 0;
  if constexpr (WL::kBlocks && !kNarrow) {
    // Two pairs per 64-byte load (WL::Pair2); each accumulator still takes pair q, then q + 1.
    for (; q + 2 <= pairs; q += 2) {
      __m512bh w0[P], w1[P];
      for (int p = 0; p < P; ++p) {
        const Elem* wp = w + p * a.panel_elems + q * 32;
        if constexpr (PrefetchBytesFor<WL, T>() > 0) {
          _mm_prefetch(reinterpret_cast<const char*>(wp) + PrefetchBytesFor<WL, T>(), _MM_HINT_T0);
        }
        WL::Pair2(wp, &w0[p], &w1[p]);
      }
      for (int t = 0; t < T; ++t) {
        const __m512bh x0 = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[q * a.xstride + t]));
        const __m512bh x1 = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[(q + 1) * a.xstride + t]));
        for (int p = 0; p < P; ++p) acc[t][p] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[t][p], x0, w0[p]), x1, w1[p]);
      }
    }
  }
  for (; q < pairs; ++q) {
    __m512bh wv[P];
    for (int p = 0; p < P; ++p) {
      const Elem* wp = w + p * a.panel_elems + q * 2 * r;
      // One prefetch per 64-byte line: a pair of 16 int8 columns is half a line.
      if (PrefetchBytesFor<WL, T>() > 0 && (sizeof(Elem) == 2 || kNarrow || q % 2 == 0)) {
        _mm_prefetch(reinterpret_cast<const char*>(wp) + PrefetchBytesFor<WL, T>(), _MM_HINT_T0);
      }
      wv[p] = WL::template Pair<kNarrow>(wp, r);
    }
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[q * a.xstride + t]));
      for (int p = 0; p < P; ++p) acc[t][p] = _mm512_dpbf16_ps(acc[t][p], xv, wv[p]);
    }
  }
  if (a.k % 2 != 0) {
    // Tail: (W[o, k-1], 0) pairs from the panel's last r elements.
    __m512bh wv[P];
    for (int p = 0; p < P; ++p) wv[p] = WL::Tail(w + p * a.panel_elems + pairs * 2 * r, r);
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[pairs * a.xstride + t]));
      for (int p = 0; p < P; ++p) acc[t][p] = _mm512_dpbf16_ps(acc[t][p], xv, wv[p]);
    }
  }
  const __mmask16 smask = static_cast<__mmask16>((1u << r) - 1);
  if (a.scales != nullptr) {  // int8: one multiply per finished element, the same in every path
    for (int p = 0; p < P; ++p) {
      const __m512 s = kNarrow ? _mm512_maskz_loadu_ps(smask, a.scales + p * 16) : _mm512_loadu_ps(a.scales + p * 16);
      for (int t = 0; t < T; ++t) acc[t][p] = _mm512_mul_ps(acc[t][p], s);
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int p = 0; p < P; ++p) {
      float* out = a.y + t * a.ldy + p * 16;
      if (kNarrow) {
        _mm512_mask_storeu_ps(out, smask, acc[t][p]);
      } else {
        _mm512_storeu_ps(out, acc[t][p]);
      }
    }
  }
}

using PairTileFn = void (*)(const PairTileArgs&);

// wide[t - 1][p - 1] for p <= PanelsFor(t); narrow[t - 1].
template <class WL>
struct PairTables {
  PairTileFn wide[kGroup][kMaxPanels] = {};
  PairTileFn narrow[kGroup] = {};
  // Prefill tiles: half a group (8 tokens) x up to 3 panels.
  PairTileFn half[3] = {&PairTile<WL, 8, 1, false>, &PairTile<WL, 8, 2, false>, &PairTile<WL, 8, 3, false>};
};

template <class WL, int T, int P>
void FillWide(PairTables<WL>& tables) {
  if constexpr (P <= PanelsFor(T)) {
    tables.wide[T - 1][P - 1] = &PairTile<WL, T, P, false>;
    FillWide<WL, T, P + 1>(tables);
  }
}

template <class WL, int T = 1>
void FillAll(PairTables<WL>& tables) {
  if constexpr (T <= kGroup) {
    FillWide<WL, T, 1>(tables);
    tables.narrow[T - 1] = &PairTile<WL, T, 1, true>;
    FillAll<WL, T + 1>(tables);
  }
}

template <class WL>
const PairTables<WL>& Tables() {
  static const PairTables<WL> tables = [] {
    PairTables<WL> t;
    FillAll(t);
    return t;
  }();
  return tables;
}

// count int8 -> bf16, in order (the m > 16 path's per-tile widening; same conversion as Int8Weights).
inline void WidenInt8(const int8_t* src, int64_t count, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    _mm512_storeu_si512(dst + i, (__m512i)Int8Weights::Pair<false>(src + i, 16));
  }
  if (i < count) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (count - i)) - 1);
    _mm512_mask_storeu_epi16(dst + i, mask, (__m512i)Int8Weights::Widen32(_mm256_maskz_loadu_epi8(mask, src + i)));
  }
}

// Widens `cols` columns of int8 panels starting at a panel boundary (whole panels, the last one possibly
// narrow) to the bf16 pair-panel layout at dst: the values the Int8 loaders give in registers.
using WidenFn = void (*)(const int8_t* src, int64_t cols, int64_t k, uint16_t* dst);

// WidenFn of the plain int8 pair panels: the layouts match element for element.
inline void WidenInt8Panels(const int8_t* src, int64_t cols, int64_t k, uint16_t* dst) {
  WidenInt8(src, cols * k, dst);
}

// The whole matmul for panels [n_begin, n_end) with tiles of WL. widen != nullptr: job.w is int8 panels
// and WL is Bf16Weights: each tile's panels are widened once per x chunk into a thread's scratch and read
// from there by every group of the chunk (prefill: the widening then costs nothing per token).
template <class WL>
void RunPairs(const MatmulJob& job, int64_t n_begin, int64_t n_end, WidenFn widen) {
  using Elem = typename WL::Elem;
  const PairTables<WL>& tables = Tables<WL>();
  const int64_t k = job.k, slot = kGroup * PackXCols(k);
  const int64_t groups = (job.m + kGroup - 1) / kGroup;
  int64_t chunk = kXChunkBytes / (PairCount(k) * kGroup * 4);
  if (chunk < 1) chunk = 1;
  const int64_t panel_elems = kPairPanelCols * k;
  // n_begin is a panel boundary (the backend splits in 16-column units); n_end is one or n.
  const int64_t full_end = n_begin + (n_end - n_begin) / kPairPanelCols * kPairPanelCols;
  PairTileArgs a;
  a.k = k;
  a.ldy = job.n;
  a.panel_elems = panel_elems;
  a.xstride = PairXStride(job.m);
  // Columns [c0, c0 + cols) as the tile's weights: in place, or widened into the scratch (64-byte aligned
  // like the weights: a pair load that straddles two cache lines cost 10-15% at m = 512).
  thread_local std::vector<uint16_t> scratch;
  const auto panels_at = [&](int64_t c0, int64_t cols) -> const Elem* {
    if (widen == nullptr) return static_cast<const Elem*>(job.w) + c0 * k;
    if (static_cast<int64_t>(scratch.size()) < cols * k + 32) scratch.resize(cols * k + 32);
    uint16_t* out = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
    widen(static_cast<const int8_t*>(job.w) + c0 * k, cols, k, out);
    return reinterpret_cast<const Elem*>(out);
  };
  const auto scales_at = [&](int64_t c0) { return job.scales != nullptr ? job.scales + c0 : nullptr; };
  for (int64_t g0 = 0; g0 < groups; g0 += chunk) {
    const int64_t g1 = g0 + chunk < groups ? g0 + chunk : groups;
    // Tiles of whole panels as wide as the chunk's first group takes; every group of the chunk passes over
    // a tile while it is in L1/L2. (Only the last group can be short; it splits or keeps the tile.)
    const int tmax = static_cast<int>(job.m - g0 * kGroup < kGroup ? job.m - g0 * kGroup : kGroup);
    // Prefill (more than one group): each full group runs as two 8-token halves over 3 panels (24
    // accumulators; 11 loads per 24 vdpbf16ps instead of 17 per 16), the second half finding the panels
    // in L1/L2: 5-10% faster at m = 512 on Zen 5. At m <= 16 the 16 x 1 tile reads each weight once, which
    // the memory stream needs (8 x 3 was 10-25% slower there).
    const bool split = job.m > kGroup;
    const int pstep = split ? 3 : PanelsFor(tmax);
    for (int64_t c0 = n_begin; c0 < full_end; c0 += pstep * kPairPanelCols) {
      const int np = static_cast<int>((full_end - c0) / kPairPanelCols < pstep ? (full_end - c0) / kPairPanelCols
                                                                               : pstep);
      const Elem* wt = panels_at(c0, np * kPairPanelCols);
      for (int64_t g = g0; g < g1; ++g) {
        const int t = static_cast<int>(job.m - g * kGroup < kGroup ? job.m - g * kGroup : kGroup);
        a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot);
        a.r = 16;
        // A short last group may take fewer panels per tile than np allows it; run np in steps.
        if (split && t == kGroup) {
          for (int h = 0; h < 2; ++h) {
            a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot) + 8 * h;
            a.w = wt;
            a.scales = scales_at(c0);
            a.y = job.y + (g * kGroup + 8 * h) * job.n + c0;
            tables.half[np - 1](a);
          }
          continue;
        }
        const int pt = PanelsFor(t);
        for (int p0 = 0; p0 < np; p0 += pt) {
          const int pn = np - p0 < pt ? np - p0 : pt;
          a.w = wt + p0 * panel_elems;
          a.scales = scales_at(c0 + p0 * kPairPanelCols);
          a.y = job.y + g * kGroup * job.n + c0 + p0 * kPairPanelCols;
          tables.wide[t - 1][pn - 1](a);
        }
      }
    }
    if (full_end < n_end) {
      const Elem* wt = panels_at(full_end, n_end - full_end);
      for (int64_t g = g0; g < g1; ++g) {
        const int t = static_cast<int>(job.m - g * kGroup < kGroup ? job.m - g * kGroup : kGroup);
        a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot);
        a.r = static_cast<int>(n_end - full_end);
        a.w = wt;
        a.scales = scales_at(full_end);
        a.y = job.y + g * kGroup * job.n + full_end;
        tables.narrow[t - 1](a);
      }
    }
  }
}

}  // namespace
}  // namespace tpserve::kernels::cpu
