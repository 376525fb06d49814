// AVX-512 int8 weight-only matmul with avx512_bf16 (see matmul_int8.h): 32 int8 weights per step widened
// to bf16 in registers (vpmovsxbd + vcvtdq2ps + vcvtne2ps2bf16: exact, |q| <= 127 has 7 significant bits)
// and one vdpbf16ps per (row, token) against x rounded to bf16 (as bf16 weights' matmul takes it), so for
// m > 1 each widened weight vector serves T tokens at twice the flops of the float32 FMA path. The k % 32
// tail is a zero-masked load of the same lanes; tiles never change an element's arithmetic. For m > 1 each
// group of rows is widened once per block of 32 tokens into a bf16 scratch and then read like bf16 weights;
// widening is exact, so an element's arithmetic is the same as the on-the-fly path's (batch invariance).
// GCC 12 false positives: its AVX-512 intrinsics seed results with self-initialised _mm512_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/matmul_int8_impl.h"

namespace tpserve::kernels::cpu {
namespace {

constexpr int kGroupRows = 4;

// Row length of widened weights: whole 32-element steps, zero-padded (so the tail step reads zeros, as the
// masked load of the on-the-fly path does).
inline int64_t PackedCols(int64_t k) { return (k + 31) / 32 * 32; }

// 32 int8 (already loaded) as 32 bf16 in their own order.
inline __m512bh WidenBf16(__m256i b) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// Rows [r0, r0 + R) x tokens [t0, t0 + T). With `wb` (R rows of PackedCols(k) bf16, already widened by
// WidenRows) the weights come from there; without, they are widened here. Same values either way.
template <int R, int T, bool kPre = false>
void Tile(const Int8MatmulJob& job, int64_t r0, int64_t t0, const uint16_t* wb = nullptr) {
  const int64_t k = job.k;
  const int64_t kp = PackedCols(k);
  const int8_t* w = job.w + r0 * k;
  const uint16_t* x = job.xb + t0 * k;
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    __m512bh wv[R];
    for (int i = 0; i < R; ++i) {
      wv[i] = kPre ? (__m512bh)_mm512_load_si512(wb + i * kp + c)
                   : WidenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i * k + c)));
    }
    for (int j = 0; j < T; ++j) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + j * k + c);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv);
    }
  }
  if (c < k) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - c)) - 1);
    __m512bh wv[R];
    for (int i = 0; i < R; ++i) {
      wv[i] = kPre ? (__m512bh)_mm512_load_si512(wb + i * kp + c) : WidenBf16(_mm256_maskz_loadu_epi8(mask, w + i * k + c));
    }
    for (int j = 0; j < T; ++j) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + j * k + c);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv);
    }
  }
  for (int i = 0; i < R; ++i) {
    const float s = job.scales[r0 + i];
    for (int j = 0; j < T; ++j) job.y[(t0 + j) * job.n + r0 + i] = Int8ReduceAdd(acc[i][j]) * s;
  }
}

// On-the-fly widening, for Int8Rows.
struct WidenTile {
  template <int R, int T>
  static void Run(const Int8MatmulJob& job, int64_t r0, int64_t t0) { Tile<R, T>(job, r0, t0); }
};

// Widens rows [r0, r0 + rows) into out ([rows, PackedCols(k)] bf16, 64-byte aligned).
void WidenRows(const Int8MatmulJob& job, int64_t r0, int rows, uint16_t* out) {
  const int64_t k = job.k, kp = PackedCols(k);
  for (int i = 0; i < rows; ++i) {
    const int8_t* w = job.w + (r0 + i) * k;
    for (int64_t c = 0; c < kp; c += 32) {
      const int64_t left = k - c;
      const __m256i b = left >= 32 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c))
                                   : _mm256_maskz_loadu_epi8(static_cast<__mmask32>((uint64_t{1} << left) - 1), w + c);
      _mm512_store_si512(out + i * kp + c, (__m512i)WidenBf16(b));
    }
  }
}

// Tokens [tb, te) (te - tb > 1) against rows [n_begin, n_end): each group of kGroupRows rows is widened
// once into `wb` and serves every token tile of the block, so widening costs 1 / (te - tb) per token.
template <int R>
void Group(const Int8MatmulJob& job, int64_t r, int64_t tb, int64_t te, const uint16_t* wb) {
  Int8TokenTiles<4>(tb, te, [&](auto tokens, int64_t t) { Tile<R, decltype(tokens)::value, true>(job, r, t, wb); });
}

}  // namespace

void MatmulInt8Avx512Bf16(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.m == 1) {  // decode: widen on the fly, 8 independent accumulators
    Int8Rows<WidenTile, 8, 1>(job, n_begin, n_end, 0);
    return;
  }
  thread_local std::vector<uint16_t> scratch;
  const size_t need = static_cast<size_t>(kGroupRows * PackedCols(job.k)) + 32;
  if (scratch.size() < need) scratch.resize(need);
  uint16_t* wb = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
  for (int64_t tb = 0; tb < job.m; tb += kInt8TokenBlock) {
    const int64_t te = std::min(job.m, tb + kInt8TokenBlock);
    int64_t r = n_begin;
    for (; r + kGroupRows <= n_end; r += kGroupRows) {
      WidenRows(job, r, kGroupRows, wb);
      Group<kGroupRows>(job, r, tb, te, wb);
    }
    for (; r < n_end; ++r) {
      WidenRows(job, r, 1, wb);
      Group<1>(job, r, tb, te, wb);
    }
  }
}

}  // namespace tpserve::kernels::cpu
