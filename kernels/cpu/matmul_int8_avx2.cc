// AVX2 int8 weight-only matmul (see matmul_int8.h): 8 int8 weights per step sign-extended (vpmovsxbd)
// and converted (vcvtdq2ps), one vfmadd per (row, token); the k % 8 tail goes through zero-padded
// 8-lane copies, so it is the same lane arithmetic as a full step. Register tiles never change an
// element's arithmetic (batch invariance).
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul_int8_impl.h"

namespace tpserve::kernels::cpu {
namespace {

// Fixed tree: 128-bit halves, then pairs.
inline float ReduceAdd(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}

inline __m256 Widen(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

struct Fma256Tile {
  template <int R, int T>
  static void Run(const Int8MatmulJob& job, int64_t r0, int64_t t0) {
    const int64_t k = job.k;
    const int8_t* w = job.w + r0 * k;
    const float* x = job.x + t0 * k;
    __m256 acc[R][T];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= k; c += 8) {
      __m256 wv[R];
      for (int i = 0; i < R; ++i) wv[i] = Widen(w + i * k + c);
      for (int j = 0; j < T; ++j) {
        const __m256 xv = _mm256_loadu_ps(x + j * k + c);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    if (c < k) {
      const int64_t rest = k - c;
      __m256 wv[R];
      for (int i = 0; i < R; ++i) {
        alignas(16) int8_t tail[16] = {};
        std::memcpy(tail, w + i * k + c, static_cast<size_t>(rest));
        wv[i] = Widen(tail);
      }
      for (int j = 0; j < T; ++j) {
        alignas(32) float tail[8] = {};
        std::memcpy(tail, x + j * k + c, static_cast<size_t>(rest) * sizeof(float));
        const __m256 xv = _mm256_load_ps(tail);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    for (int i = 0; i < R; ++i) {
      const float s = job.scales[r0 + i];
      for (int j = 0; j < T; ++j) job.y[(t0 + j) * job.n + r0 + i] = ReduceAdd(acc[i][j]) * s;
    }
  }
};

}  // namespace

// 4 rows x 2 tokens: 8 accumulators + 4 widened weights + 1 x vector in 16 registers.
void MatmulInt8Avx2(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end) {
  Int8Matmul<Fma256Tile, 4, 4, 2>(job, n_begin, n_end);
}

}  // namespace tpserve::kernels::cpu
