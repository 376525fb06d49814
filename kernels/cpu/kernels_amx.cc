// AMX-BF16 matmul for BF16 weights (Sapphire Rapids and later). Built with AMX and AVX-512 flags
// (kernels/CMakeLists.txt) and only reached through runtime dispatch: CpuIsa::kAmx, which DetectCpuIsa
// picks only after Linux granted this process the tile state (arch_prctl, in backend.cc).
//
// The tile product is computed transposed, y^T = W · x^T, so the weights are read in place:
//   A (tmm3-5): 16 weight rows x 32 bf16 of k, loaded straight from W [n, k] with stride 2k bytes;
//   B (tmm6-7): 16 pairs of k x 16 tokens, from x packed by PackXAmxBlock ([k/2][16 tokens][2]);
//   C (tmm0-3): 16 output features x 16 tokens, float32.
// tdpbf16ps computes each C element from its own weight row and token only, in k order, so a token's
// result never depends on the other tokens in its 16-token block, on m, on the tile shape or on the
// thread: the batch invariance of cpu_kernels.h holds (tests/kernels/cpu_ops_test.cc checks it).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {
namespace {

constexpr int kTokens = 16;  // tokens per packed block (B tile columns)

inline int64_t MinTokens(int64_t left) { return left < kTokens ? left : kTokens; }

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// tmm0-5 hold `rows` x 64 bytes (C: rows x 16 f32; A: rows x 32 bf16); tmm6-7 hold 16 x 64 bytes (B).
void ConfigureTiles(int rows) {
  TileConfig c;
  __builtin_memset(&c, 0, sizeof(c));
  c.palette_id = 1;
  for (int t = 0; t < 6; ++t) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = 64;
  }
  for (int t = 6; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  _tile_loadconfig(&c);
}

// Writes one C^T tile (rows features x 16 tokens, staged in `buf`) to y[m0 + t, n0 + f] for the first
// `mr` tokens and `rows` features.
inline void StoreTransposed(const float* buf, const MatmulJob& job, int64_t n0, int rows, int64_t m0, int mr) {
  const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(kTokens));
  const __mmask16 fmask = static_cast<__mmask16>(rows >= 16 ? 0xffff : (1u << rows) - 1);
  for (int t = 0; t < mr; ++t) {
    const __m512 v =
        _mm512_mask_i32gather_ps(_mm512_setzero_ps(), fmask, _mm512_add_epi32(col, _mm512_set1_epi32(t)), buf, 4);
    _mm512_mask_storeu_ps(job.y + (m0 + t) * job.n + n0, fmask, v);
  }
}

// `na` (1..3) feature blocks of 16 rows from n0 against one token block: C tmm0..2, A tmm3..5, B tmm6.
void BlockOneTokenTile(const MatmulJob& job, int64_t n0, int na, int rows, int64_t block) {
  const int64_t k = job.k, steps = k / 32, stride = 2 * k;
  const char* w = reinterpret_cast<const char*>(static_cast<const uint16_t*>(job.w) + n0 * k);
  const char* xp = reinterpret_cast<const char*>(job.xp + block * kTokens * k);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(6, xp + s * 1024, 64);
    _tile_loadd(3, w + s * 64, stride);
    _tile_dpbf16ps(0, 3, 6);
    if (na > 1) {
      _tile_loadd(4, w + 16 * stride + s * 64, stride);
      _tile_dpbf16ps(1, 4, 6);
    }
    if (na > 2) {
      _tile_loadd(5, w + 32 * stride + s * 64, stride);
      _tile_dpbf16ps(2, 5, 6);
    }
  }
  alignas(64) float buf[16 * kTokens];
  const int64_t m0 = block * kTokens;
  const int mr = static_cast<int>(MinTokens(job.m - m0));
  _tile_stored(0, buf, 64);
  StoreTransposed(buf, job, n0, rows, m0, mr);
  if (na > 1) {
    _tile_stored(1, buf, 64);
    StoreTransposed(buf, job, n0 + 16, 16, m0, mr);
  }
  if (na > 2) {
    _tile_stored(2, buf, 64);
    StoreTransposed(buf, job, n0 + 32, 16, m0, mr);
  }
}

// Two feature blocks (n0, n0 + 16) against two token blocks: C tmm0..3, A tmm4..5, B tmm6..7. Each
// weight tile feeds two products, each token tile two.
void BlockTwoByTwo(const MatmulJob& job, int64_t n0, int64_t block) {
  const int64_t k = job.k, steps = k / 32, stride = 2 * k;
  const char* w = reinterpret_cast<const char*>(static_cast<const uint16_t*>(job.w) + n0 * k);
  const char* x0 = reinterpret_cast<const char*>(job.xp + block * kTokens * k);
  const char* x1 = x0 + kTokens * k * 2;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, w + s * 64, stride);
    _tile_loadd(6, x0 + s * 1024, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, x1 + s * 1024, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, w + 16 * stride + s * 64, stride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float buf[16 * kTokens];
  const int64_t m0 = block * kTokens, m1 = m0 + kTokens;
  const int mr0 = static_cast<int>(MinTokens(job.m - m0)), mr1 = static_cast<int>(MinTokens(job.m - m1));
  _tile_stored(0, buf, 64);
  StoreTransposed(buf, job, n0, 16, m0, mr0);
  _tile_stored(1, buf, 64);
  StoreTransposed(buf, job, n0, 16, m1, mr1);
  _tile_stored(2, buf, 64);
  StoreTransposed(buf, job, n0 + 16, 16, m0, mr0);
  _tile_stored(3, buf, 64);
  StoreTransposed(buf, job, n0 + 16, 16, m1, mr1);
}

}  // namespace

void PackXAmxBlock(const uint16_t* xb, int64_t m, int64_t k, int64_t block, uint16_t* out) {
  const int64_t pairs = k / 2, r0 = block * kTokens;
  const int mr = static_cast<int>(MinTokens(m - r0));
  const __mmask16 mask = static_cast<__mmask16>(mr >= 16 ? 0xffff : (1u << mr) - 1);
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(pairs)));
  const int32_t* in = reinterpret_cast<const int32_t*>(xb + r0 * k);
  int32_t* o = reinterpret_cast<int32_t*>(out + block * kTokens * k);
  for (int64_t p = 0; p < pairs; ++p) {
    _mm512_storeu_si512(o + p * kTokens, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, in + p, 4));
  }
}

void MatmulAmxBf16(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  const int64_t blocks = (job.m + kTokens - 1) / kTokens;
  const int64_t full_end = n_begin + (n_end - n_begin) / 16 * 16;
  ConfigureTiles(16);
  if (blocks == 1) {
    // Decode and small batches: three weight tiles in flight per token tile; the weights stream once.
    for (int64_t n0 = n_begin; n0 < full_end; n0 += 48) {
      const int na = static_cast<int>((full_end - n0) / 16 < 3 ? (full_end - n0) / 16 : 3);
      BlockOneTokenTile(job, n0, na, 16, 0);
    }
  } else {
    // A slab of up to ~1 MiB of weight rows stays in L2 while every token block pair passes over it, 32
    // rows at a time; each pair of packed token blocks is then read from L2 once per 32 rows instead of
    // streaming all of x from L3 for every 32 rows (which bound a 512-token prefill).
    const int64_t slab = std::max<int64_t>(32, (int64_t{1} << 20) / (2 * job.k) / 32 * 32);
    for (int64_t nb = n_begin; nb < full_end; nb += slab) {
      const int64_t ne = std::min(full_end, nb + slab), pairs_end = nb + (ne - nb) / 32 * 32;
      int64_t b = 0;
      for (; b + 2 <= blocks; b += 2) {
        for (int64_t n0 = nb; n0 < pairs_end; n0 += 32) BlockTwoByTwo(job, n0, b);
      }
      for (int64_t n0 = nb; n0 < pairs_end; n0 += 32) {
        for (int64_t bb = b; bb < blocks; ++bb) BlockOneTokenTile(job, n0, 2, 16, bb);
      }
      if (pairs_end < ne) {
        for (int64_t bb = 0; bb < blocks; ++bb) BlockOneTokenTile(job, pairs_end, 1, 16, bb);
      }
    }
  }
  if (full_end < n_end) {
    // Fewer than 16 features left (only at the matrix's end): shorter weight and accumulator tiles.
    const int rows = static_cast<int>(n_end - full_end);
    ConfigureTiles(rows);
    for (int64_t b = 0; b < blocks; ++b) BlockOneTokenTile(job, full_end, 1, rows, b);
  }
  _tile_release();
}

}  // namespace tpserve::kernels::cpu
