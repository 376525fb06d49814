// Tiling shared by the per-ISA int8 kernels (matmul_int8.h); included only by matmul_int8_*.cc. A kernel
// supplies its register tile as a struct `K` from its own anonymous namespace with
//   template <int R, int T> static void Run(const Int8MatmulJob& job, int64_t r0, int64_t t0);
// (rows [r0, r0 + R) x tokens [t0, t0 + T)), so instantiations never mix ISAs across translation units.
// The tile shape never changes an element's arithmetic; these loops only choose which tile computes it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cpu/matmul_int8.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace tpserve::kernels::cpu {
namespace {

// Tokens per block: a block's x rows stay in L2 while every row tile of the thread's range walks them.
constexpr int64_t kInt8TokenBlock = 32;

// Rows [r_begin, r_end) in tiles of R (the rest one row at a time) for tokens [t0, t0 + T).
template <class K, int R, int T>
void Int8Rows(const Int8MatmulJob& job, int64_t r_begin, int64_t r_end, int64_t t0) {
  int64_t r = r_begin;
  for (; r + R <= r_end; r += R) K::template Run<R, T>(job, r, t0);
  for (; r < r_end; ++r) K::template Run<1, T>(job, r, t0);
}

// Tokens [t, te) in tiles of T, the remainder (< T) in one smaller tile: fn(std::integral_constant<int, T'>, t).
template <int T, class F>
void Int8TokenTiles(int64_t t, int64_t te, F&& fn) {
  if constexpr (T > 0) {
    for (; t + T <= te; t += T) fn(std::integral_constant<int, T>{}, t);
    Int8TokenTiles<T - 1>(t, te, fn);
  }
}

// The whole matmul for rows [n_begin, n_end): blocks of kInt8TokenBlock tokens; a block of one token
// (decode) in kDecodeRows x 1 tiles, others in kRows x kTokens tiles.
template <class K, int kDecodeRows, int kRows, int kTokens>
void Int8Matmul(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end) {
  for (int64_t tb = 0; tb < job.m; tb += kInt8TokenBlock) {
    const int64_t te = std::min(job.m, tb + kInt8TokenBlock);
    if (te - tb == 1) {
      Int8Rows<K, kDecodeRows, 1>(job, n_begin, n_end, tb);
      continue;
    }
    Int8TokenTiles<kTokens>(tb, te, [&](auto tokens, int64_t t) {
      Int8Rows<K, kRows, decltype(tokens)::value>(job, n_begin, n_end, t);
    });
  }
}

#ifdef __AVX512F__
// Fixed tree: 256-bit halves, 128-bit halves, then pairs (as kernels_avx512.cc's V512::ReduceAdd).
inline float Int8ReduceAdd(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE)));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}
#endif

}  // namespace
}  // namespace tpserve::kernels::cpu
