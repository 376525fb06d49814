// Weight-stationary vdpbf16ps matmul over bf16 weights repacked into pair panels (bf16_pair_panels.h), for
// AVX-512 CPUs with avx512_bf16 and no AMX (Zen 4/5). Built with AVX-512 flags (kernels/CMakeLists.txt,
// *avx512* glob) and only reached through runtime dispatch.
//
// Why this layout: with row-major weights every output element is a 16-lane accumulator that needs a
// horizontal sum, and a register tile of tokens x rows must reload x for every row; at 16 tokens that
// kernel topped out near 55% of the vdpbf16ps peak on Zen 5. Here one 64-byte load of a panel's pair q is
// the operand of 16 output columns, each token's x pair is a 32-bit broadcast, and a tile of T tokens x P
// panels keeps T * P accumulators in zmm registers with nothing to reduce at the end. At m = 16 every
// weight byte is read from memory once and used by all 16 tokens (T = 16, P = 1); at m = 1 the tile runs
// P = 4 panel streams side by side so the dependency chains do not bind and decode stays at the memory
// bandwidth.
//
// Arithmetic (the batch-invariance contract of cpu_kernels.h): y[t, o] is lane o % 16 of one float32
// accumulator, vdpbf16ps over the pairs q = 0, 1, ..., in order, then the odd-k tail pair (x[k-1], 0)
// against (W[o, k-1], 0). Tile shapes, token groups, thread splits and m only decide which elements run
// side by side, never that order: every m, from decode to prefill, gives the same bits per element.
//
// Loop order per call (a range of whole panels): chunks of token groups of 16 (kXChunkBytes of packed x),
// then tiles of panels, then the chunk's groups; a panel (16 * k bf16: 64 KiB at k = 2048) is read from
// memory once per chunk and from L2 by the chunk's other groups, x streams from L2/L3. (Chunks of 384 KiB,
// x kept in L2, measured the same or up to 4% slower at m = 512.)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/bf16_pair_panels.h"
#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {
namespace {

constexpr int kGroup = 16;                  // tokens per packed x group
constexpr int kMaxPanels = 4;               // panel streams of the widest tile (T <= 3)
constexpr int64_t kXChunkBytes = 2 << 20;  // packed x of the groups that share one pass over the weights
// Software prefetch distance within each panel stream of tiles of >= 4 tokens. At 16 tokens one core both
// computes and streams at its limit (64 bytes of weights per 8 cycles of vdpbf16ps); the hardware
// prefetcher alone left the two serialised (0.58 ms for 2048x2048 on one Zen 5 core), 1 KiB ahead changed
// nothing, 8 KiB ahead overlapped them (0.30-0.34 ms). Decode tiles (< 4 tokens) are pure streaming and
// ran fastest with the hardware prefetcher alone.
constexpr int64_t kPrefetchBytes = 8192;

// Panels per tile for T tokens: enough independent accumulators (T * P >= 12) to cover vdpbf16ps latency at
// two per cycle, within 32 zmm registers (T * P accumulators + P weights + a broadcast). Decode (T <= 3)
// is memory-bound: 4 panel streams kept it at the bandwidth, 12 were slower (more streams to follow).
constexpr int PanelsFor(int t) { return t >= 12 ? 1 : t >= 6 ? 2 : t >= 4 ? 3 : 4; }

struct PairTileArgs {
  const uint32_t* x;   // the group: [pairs][16] bf16 pairs
  const uint16_t* w;   // the tile's first panel
  int64_t panel_elems;  // 16 * k: panel p of the tile at w + p * panel_elems
  int64_t k;
  int r;               // columns of the tile's panels (16, or fewer in a last, narrow panel with P = 1)
  float* y;            // y[t0, c0]
  int64_t ldy;
};

// T tokens x P panels. kNarrow: one panel of a.r < 16 columns (masked loads and stores).
template <int T, int P, bool kNarrow>
void PairTile(const PairTileArgs& a) {
  const int64_t pairs = a.k / 2;
  const int r = kNarrow ? a.r : 16;
  const __mmask32 wmask = kNarrow ? static_cast<__mmask32>((uint64_t{1} << (2 * r)) - 1) : ~__mmask32{0};
  __m512 acc[T][P];
  for (int t = 0; t < T; ++t)
    for (int p = 0; p < P; ++p) acc[t][p] = _mm512_setzero_ps();
  const uint32_t* x = a.x;
  const uint16_t* w = a.w;
  for (int64_t q = 0; q < pairs; ++q) {
    __m512bh wv[P];
    for (int p = 0; p < P; ++p) {
      const uint16_t* wp = w + p * a.panel_elems + q * 2 * r;
      if (T >= 4) _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetchBytes, _MM_HINT_T0);
      wv[p] = kNarrow ? (__m512bh)_mm512_maskz_loadu_epi16(wmask, wp) : (__m512bh)_mm512_loadu_si512(wp);
    }
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[q * kGroup + t]));
      for (int p = 0; p < P; ++p) acc[t][p] = _mm512_dpbf16_ps(acc[t][p], xv, wv[p]);
    }
  }
  if (a.k % 2 != 0) {
    // Tail: (W[o, k-1], 0) pairs from the panel's last r elements.
    __m512bh wv[P];
    const __mmask16 m16 = static_cast<__mmask16>((1u << r) - 1);
    for (int p = 0; p < P; ++p) {
      const uint16_t* wp = w + p * a.panel_elems + pairs * 2 * r;
      wv[p] = (__m512bh)_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m16, wp));
    }
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[pairs * kGroup + t]));
      for (int p = 0; p < P; ++p) acc[t][p] = _mm512_dpbf16_ps(acc[t][p], xv, wv[p]);
    }
  }
  const __mmask16 smask = static_cast<__mmask16>((1u << r) - 1);
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
struct PairTables {
  PairTileFn wide[kGroup][kMaxPanels] = {};
  PairTileFn narrow[kGroup] = {};
  // Prefill tiles: half a group (8 tokens) x up to 3 panels.
  PairTileFn half[3] = {&PairTile<8, 1, false>, &PairTile<8, 2, false>, &PairTile<8, 3, false>};
};

template <int T, int P>
void FillWide(PairTables& tables) {
  if constexpr (P <= PanelsFor(T)) {
    tables.wide[T - 1][P - 1] = &PairTile<T, P, false>;
    FillWide<T, P + 1>(tables);
  }
}

template <int T = 1>
void FillAll(PairTables& tables) {
  if constexpr (T <= kGroup) {
    FillWide<T, 1>(tables);
    tables.narrow[T - 1] = &PairTile<T, 1, true>;
    FillAll<T + 1>(tables);
  }
}

}  // namespace

void MatmulAvx512Bf16Pairs(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  static const PairTables tables = [] {
    PairTables t;
    FillAll(t);
    return t;
  }();
  const int64_t k = job.k, slot = kGroup * PackXCols(k);
  const int64_t groups = (job.m + kGroup - 1) / kGroup;
  int64_t chunk = kXChunkBytes / (PairCount(k) * kGroup * 4);
  if (chunk < 1) chunk = 1;
  const uint16_t* w = static_cast<const uint16_t*>(job.w);
  const int64_t panel_elems = kPairPanelCols * k;
  // n_begin is a panel boundary (the backend splits in 16-column units); n_end is one or n.
  const int64_t full_end = n_begin + (n_end - n_begin) / kPairPanelCols * kPairPanelCols;
  PairTileArgs a;
  a.k = k;
  a.ldy = job.n;
  a.panel_elems = panel_elems;
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
      for (int64_t g = g0; g < g1; ++g) {
        const int t = static_cast<int>(job.m - g * kGroup < kGroup ? job.m - g * kGroup : kGroup);
        a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot);
        a.r = 16;
        // A short last group may take fewer panels per tile than np allows it; run np in steps.
        if (split && t == kGroup) {
          for (int h = 0; h < 2; ++h) {
            a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot) + 8 * h;
            a.w = w + c0 * k;
            a.y = job.y + (g * kGroup + 8 * h) * job.n + c0;
            tables.half[np - 1](a);
          }
          continue;
        }
        const int pt = PanelsFor(t);
        for (int p0 = 0; p0 < np; p0 += pt) {
          const int pn = np - p0 < pt ? np - p0 : pt;
          a.w = w + (c0 + p0 * kPairPanelCols) * k;
          a.y = job.y + g * kGroup * job.n + c0 + p0 * kPairPanelCols;
          tables.wide[t - 1][pn - 1](a);
        }
      }
    }
    if (full_end < n_end) {
      for (int64_t g = g0; g < g1; ++g) {
        const int t = static_cast<int>(job.m - g * kGroup < kGroup ? job.m - g * kGroup : kGroup);
        a.x = reinterpret_cast<const uint32_t*>(job.xp + g * slot);
        a.r = static_cast<int>(n_end - full_end);
        a.w = w + full_end * k;
        a.y = job.y + g * kGroup * job.n + full_end;
        tables.narrow[t - 1](a);
      }
    }
  }
}

}  // namespace tpserve::kernels::cpu
