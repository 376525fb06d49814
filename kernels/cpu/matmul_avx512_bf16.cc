// Register-tiled vdpbf16ps matmul for BF16 weights on AVX-512 CPUs without AMX (Zen 4/5, Cooper Lake),
// where vdpbf16ps runs on full 512-bit pipes and a 16-token decode step is compute-shaped. Built with
// AVX-512 flags (kernels/CMakeLists.txt, *avx512* glob) and only reached through runtime dispatch.
//
// Arithmetic (the batch-invariance contract of cpu_kernels.h): every y[t, o] is one 16-lane float32
// accumulator, vdpbf16ps over k in 32-element chunks in ascending order (the last chunk zero-padded),
// then the fixed reduction tree of V512::ReduceAdd (lanes i + i+8, then + i+4, then (0+2) + (1+3)).
// That is the same value the untiled Bf16DotTile computes, for every m, tile shape, k block and thread.
//
// Blocking, per thread (a range of weight rows):
//   for each group of token strips whose packed x (one k block of it) stays in L2 (kXBlockBytes)
//     for each tile of kNR weight rows
//       for each k block (whole rows up to 2048 k, else ~1024-k blocks): the tile's slice stays in L1
//         for each strip of kMR tokens of the group: kMR x kNR accumulators in zmm registers.
// A weight slice is read from memory once per token group and reused by every strip; during the group's
// last strips the next slice is prefetched into L1, a few lines per k step. Accumulators of an unfinished
// k block are parked in a per-thread buffer (an exact float32 store and reload, so k blocking does not
// change the arithmetic).
//
// x arrives packed by PackXAvx512Bf16Block: [ceil(m / kMR) strips][k chunks][kMR tokens][32 bf16],
// zero past m and past k, so a strip's chunk is kMR consecutive cache lines.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {
namespace {

constexpr int kMR = kBf16StripTokens;  // tokens per register tile
constexpr int kNR = 6;                 // weight rows per register tile: 24 accumulators + 4 x + 1 w zmm
constexpr int64_t kXBlockBytes = 512 << 10;  // packed x of one token group's k block, kept in L2
// A tile's k slice stays in L1 while every strip of the group passes over it: whole rows when they are at
// most 64 chunks (2048 k: 24 KiB), else blocks of about 32 chunks (12 KiB).
constexpr int64_t kMaxBlockChunks = 64;
constexpr int64_t kBlockChunks = 32;
constexpr int64_t kPrefetchStrips = 4;       // strips of a group that prefetch the next tile

// Four accumulators -> their four ReduceAdd sums (V512::ReduceAdd's pairings exactly; float addition is
// commutative bitwise, so a transposed tree over four vectors gives the same bits at 3.5 ops a sum).
inline __m128 Reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // [a0+a2, a1+a3, b0+b2, b1+b3] in 128-bit chunks: lanes i + i+8.
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  // Chunk j: the four sums h[i] + h[i+4] of vector j.
  const __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  // Per chunk: [q0+q2, q1+q3, ...], then lane 0 = (q0+q2) + (q1+q3).
  const __m512 r = _mm512_add_ps(q, _mm512_permute_ps(q, 0x4E));
  const __m512 s = _mm512_add_ps(r, _mm512_permute_ps(r, 0xB1));
  return _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s));
}

// One call of the register tile: `MR` tokens of one strip x `NR` weight rows over one k block.
struct TileArgs {
  const uint16_t* x;  // the strip at the block's first chunk: [chunks][kMR][32]
  const uint16_t* w;  // weight row 0 of the tile at the block's first chunk; row j at w + j * k
  int64_t k;
  int64_t full;   // chunks of the block wholly inside k
  bool tail;      // then one more, zero-padded chunk (k % 32 != 0, last block)
  float* park;    // [kMR * kNR][16] accumulators between k blocks
  const float* park_next;  // the next call's park, prefetched (nullptr: none)
  bool resume;    // start from park (not the first block)
  bool finish;    // last block: reduce into y; else store into park
  float* y;       // y[t0, n0]; token i row j at y + i * ldy + j
  int64_t ldy;
  // This strip's share of the next weight slice to prefetch: lines [pf_first, pf_last) of a slice whose
  // rows start pf_row_bytes apart at pf, pf_lpr lines each; pf_step lines per k step.
  const char* pf;
  int64_t pf_row_bytes, pf_lpr, pf_first, pf_last, pf_step;
};

template <int MR, int NR>
void Tile(const TileArgs& a) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      acc[i][j] = a.resume ? _mm512_load_ps(a.park + (i * kNR + j) * 16) : _mm512_setzero_ps();
  const uint16_t* x = a.x;
  const uint16_t* w = a.w;
  const int64_t k = a.k;
  int64_t line = a.pf_first;
  int64_t col = a.pf_lpr > 0 ? line % a.pf_lpr : 0;
  const char* p = a.pf + (a.pf_lpr > 0 ? line / a.pf_lpr : 0) * a.pf_row_bytes + col * 64;
  for (int64_t c = 0; c < a.full; ++c) {
    if (a.park_next != nullptr && c < kMR * kNR) {
      _mm_prefetch(reinterpret_cast<const char*>(a.park_next + c * 16), _MM_HINT_T0);
    }
    // Into L1, a few lines per step: the next slice's first strip then finds its weights there instead of
    // stalling on memory (the hardware prefetcher ramps up too slowly on 6 short row streams).
    for (int64_t q = 0; q < a.pf_step && line < a.pf_last; ++q, ++line) {
      _mm_prefetch(p, _MM_HINT_T0);
      p += 64;
      if (++col == a.pf_lpr) {
        col = 0;
        p += a.pf_row_bytes - a.pf_lpr * 64;
      }
    }
    __m512bh xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(x + c * (kMR * 32) + i * 32);
    for (int j = 0; j < NR; ++j) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + j * k + c * 32);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
    }
  }
  if (a.tail) {
    const int64_t kk = a.full * 32;
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k % 32)) - 1);
    __m512bh xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(x + a.full * (kMR * 32) + i * 32);
    for (int j = 0; j < NR; ++j) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * k + kk);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
    }
  }
  if (!a.finish) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) _mm512_store_ps(a.park + (i * kNR + j) * 16, acc[i][j]);
    return;
  }
  // Sums in (token, row) order, four at a time.
  constexpr int kCount = MR * NR;
  __m512 flat[(kCount + 3) / 4 * 4];
  for (int e = 0; e < kCount; ++e) flat[e] = acc[e / NR][e % NR];
  for (int e = kCount; e < (kCount + 3) / 4 * 4; ++e) flat[e] = _mm512_setzero_ps();
  for (int e = 0; e < kCount; e += 4) {
    alignas(16) float out[4];
    _mm_store_ps(out, Reduce4(flat[e], flat[e + 1], flat[e + 2], flat[e + 3]));
    for (int f = e; f < e + 4 && f < kCount; ++f) a.y[(f / NR) * a.ldy + f % NR] = out[f - e];
  }
}

using TileFn = void (*)(const TileArgs&);

template <int I = 0>
void FillTable(TileFn* table) {
  if constexpr (I < kMR * kNR) {
    table[I] = &Tile<I / kNR + 1, I % kNR + 1>;
    FillTable<I + 1>(table);
  }
}

// This thread's parking space for accumulators between k blocks, grown on demand, freed when the thread
// ends (the pool's threads live as long as their backend).
struct ParkStore {
  float* buf = nullptr;
  int64_t size = 0;
  ~ParkStore() { std::free(buf); }
};

float* ParkBuffer(int64_t floats) {
  thread_local ParkStore store;
  if (store.size < floats) {
    std::free(store.buf);
    store.buf = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(floats) * 4));
    store.size = floats;
  }
  return store.buf;
}

}  // namespace

void PackXAvx512Bf16Block(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out) {
  const int64_t kp = PackXCols(k), chunks = kp / 32;
  for (int64_t s = block * (16 / kMR); s < (block + 1) * (16 / kMR); ++s) {
    uint16_t* strip = out + s * kMR * kp;
    for (int i = 0; i < kMR; ++i) {
      const int64_t t = s * kMR + i;
      for (int64_t c = 0; c < chunks; ++c) {
        uint16_t* dst = strip + (c * kMR + i) * 32;
        const int64_t n = t < m ? (k - c * 32 < 32 ? k - c * 32 : 32) : 0;
        if (n > 0) std::memcpy(dst, xb + t * k + c * 32, n * 2);
        if (n < 32) std::memset(dst + n, 0, (32 - n) * 2);
      }
    }
  }
}

void MatmulAvx512Bf16Packed(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  static const TileFn* const table = [] {
    static TileFn t[kMR * kNR];
    FillTable(t);
    return t;
  }();
  const int64_t k = job.k, kp = PackXCols(k), chunks = kp / 32, full_chunks = k / 32;
  const int64_t strips = (job.m + kMR - 1) / kMR;
  // k blocks of equal size, each at most kMaxBlockChunks (one block when the tile fits L1 whole).
  const int64_t blocks = chunks <= kMaxBlockChunks ? 1 : (chunks + kBlockChunks - 1) / kBlockChunks;
  const int64_t kc = (chunks + blocks - 1) / blocks;
  int64_t group = kXBlockBytes / (kMR * kc * 64);
  if (group < 1) group = 1;
  if (group > strips) group = strips;
  float* park = blocks > 1 ? ParkBuffer(group * kMR * kNR * 16) : nullptr;
  const uint16_t* w = static_cast<const uint16_t*>(job.w);
  TileArgs a;
  a.k = k;
  a.ldy = job.n;
  a.pf_row_bytes = k * 2;
  for (int64_t g0 = 0; g0 < strips; g0 += group) {
    const int64_t g1 = g0 + group < strips ? g0 + group : strips;
    const int64_t ns = g1 - g0;
    // Only the group's last strips prefetch: earlier, the next slice would evict this one from L1.
    const int64_t pf_strips = ns < kPrefetchStrips ? ns : kPrefetchStrips;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kNR) {
      const int nr = static_cast<int>(n_end - n0 < kNR ? n_end - n0 : kNR);
      for (int64_t c0 = 0; c0 < chunks; c0 += kc) {
        const int64_t c1 = c0 + kc < chunks ? c0 + kc : chunks;
        // The next slice: this tile's next k block, else the next tile's first.
        int64_t pf_rows = 0;
        if (c1 < chunks) {
          a.pf = reinterpret_cast<const char*>(w + n0 * k + c1 * 32);
          pf_rows = nr;
          a.pf_lpr = (c1 + kc < chunks ? c1 + kc : chunks) - c1;
        } else if (n0 + kNR < n_end) {
          a.pf = reinterpret_cast<const char*>(w + (n0 + kNR) * k);
          pf_rows = n_end - n0 - kNR < kNR ? n_end - n0 - kNR : kNR;
          a.pf_lpr = kc;
        }
        const int64_t pf_lines = pf_rows * a.pf_lpr;
        const int64_t per_strip = (pf_lines + pf_strips - 1) / pf_strips;
        a.pf_step = (per_strip + (c1 - c0) - 1) / (c1 - c0);
        a.w = w + n0 * k + c0 * 32;
        a.full = (c1 < full_chunks ? c1 : full_chunks) - c0;
        a.tail = c1 == chunks && full_chunks < chunks;
        a.resume = c0 > 0;
        a.finish = c1 == chunks;
        for (int64_t s = g0; s < g1; ++s) {
          const int mr = static_cast<int>(job.m - s * kMR < kMR ? job.m - s * kMR : kMR);
          const int64_t slot = s - (g1 - pf_strips);  // < 0: this strip does not prefetch
          a.pf_first = slot < 0 ? pf_lines : (slot * per_strip < pf_lines ? slot * per_strip : pf_lines);
          a.pf_last = a.pf_first + per_strip < pf_lines ? a.pf_first + per_strip : pf_lines;
          a.x = job.xp + s * kMR * kp + c0 * kMR * 32;
          a.park = park != nullptr ? park + (s - g0) * kMR * kNR * 16 : nullptr;
          // Parked accumulators come back from L2 one strip later; fetch them while this strip computes.
          a.park_next = park != nullptr && c0 + kc < chunks ? park + (s + 1 < g1 ? s + 1 - g0 : 0) * kMR * kNR * 16 : nullptr;
          a.y = job.y + s * kMR * job.n + n0;
          table[(mr - 1) * kNR + (nr - 1)](a);
        }
      }
    }
  }
}

}  // namespace tpserve::kernels::cpu
