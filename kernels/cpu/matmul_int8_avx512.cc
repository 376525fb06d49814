// AVX-512 int8 weight-only matmul (see matmul_int8.h): 16 int8 weights per step sign-extended
// (vpmovsxbd) and converted (vcvtdq2ps) in registers, one vfmadd per (row, token); the k % 16 tail is a
// zero-masked load of the same lanes. Register tiles of R rows x T tokens reuse each widened weight
// vector T times; a tile's shape never changes an element's arithmetic (batch invariance).
// GCC 12 false positives: its AVX-512 intrinsics seed results with self-initialised _mm512_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/matmul_int8_impl.h"

namespace tpserve::kernels::cpu {
namespace {

inline __m512 Widen(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 WidenN(const int8_t* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

// Rows [r0, r0 + R) x tokens [t0, t0 + T).
struct Fma512Tile {
  template <int R, int T>
  static void Run(const Int8MatmulJob& job, int64_t r0, int64_t t0) {
    const int64_t k = job.k;
    const int8_t* w = job.w + r0 * k;
    const float* x = job.x + t0 * k;
    __m512 acc[R][T];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= k; c += 16) {
      __m512 wv[R];
      for (int i = 0; i < R; ++i) wv[i] = Widen(w + i * k + c);
      for (int j = 0; j < T; ++j) {
        const __m512 xv = _mm512_loadu_ps(x + j * k + c);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    if (c < k) {
      const __mmask16 mask = static_cast<__mmask16>((1u << (k - c)) - 1);
      __m512 wv[R];
      for (int i = 0; i < R; ++i) wv[i] = WidenN(w + i * k + c, mask);
      for (int j = 0; j < T; ++j) {
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + j * k + c);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    for (int i = 0; i < R; ++i) {
      const float s = job.scales[r0 + i];
      for (int j = 0; j < T; ++j) job.y[(t0 + j) * job.n + r0 + i] = Int8ReduceAdd(acc[i][j]) * s;
    }
  }
};

}  // namespace

// Decode: 8 independent accumulators keep both FMA pipes busy. Otherwise 4 rows x 4 tokens: 16
// accumulators + 4 widened weights + 1 x vector in 32 registers.
void MatmulInt8Avx512(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end) {
  Int8Matmul<Fma512Tile, 8, 4, 4>(job, n_begin, n_end);
}

}  // namespace tpserve::kernels::cpu
