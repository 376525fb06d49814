// AVX2 + FMA + F16C CPU kernels (8 lanes). Built with those flags only (kernels/CMakeLists.txt) and only
// reached through runtime dispatch.
#include <immintrin.h>

#include "kernels/cpu/kernels_impl.h"

namespace tpserve::kernels::cpu {
namespace {

struct V256 {
  using T = __m256;
  static constexpr int L = 8;
  static __m256i Mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static T Zero() { return _mm256_setzero_ps(); }
  static T Set1(float v) { return _mm256_set1_ps(v); }
  static T Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T LoadN(const float* p, int n) { return _mm256_maskload_ps(p, Mask(n)); }
  static void StoreN(float* p, T v, int n) { _mm256_maskstore_ps(p, Mask(n), v); }
  static T LoadBF16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static T LoadF16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static T Add(T a, T b) { return _mm256_add_ps(a, b); }
  static T Sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T Mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T Div(T a, T b) { return _mm256_div_ps(a, b); }
  static T Max(T a, T b) { return _mm256_max_ps(a, b); }
  static T Fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float ReduceAdd(T v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
  }
  // Cephes-style expf; inputs clamped to [-87, 88] so 2^n stays a normal float.
  static T Exp(T x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const T fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    T y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
};

// ---- bf16 weights: even/odd split ----
// A 256-bit load of 16 bf16 weights w[c..c+16) is two float32 vectors without any shuffle: each 32-bit
// word holds (w[c+2j], w[c+2j+1]), so `word << 16` is the even elements and `word & 0xffff0000` the odd
// ones. x is repacked once per call to match (split_x_row: 8 evens, then 8 odds, per chunk of 16), so
// the inner loop is 2 loads + 2 bit ops per 16 weights feeding MR * 2 FMAs (the widening load that
// LoadBF16 does costs a shuffle per 8 weights, on the pipes the FMAs need).
//
// Every y[r, o] is: one 8-lane accumulator, acc = fma(x_even, w_even, acc); acc = fma(x_odd, w_odd, acc)
// for each 16-chunk of k in order (the last zero-padded), then V256::ReduceAdd. Tiles and the k-blocking
// (accumulators parked in memory between k-chunks, exactly) only decide what runs side by side, so the
// value never depends on m, the tile or the thread (batch invariance, cpu_kernels.h).

void SplitXRow(const float* x, int64_t k, float* out) {
  const __m256i even_idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    // [x0..x7] -> evens of the first half in lanes 0-3, odds in 4-7; likewise the second half.
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c), even_idx);
    const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c + 8), even_idx);
    _mm256_storeu_ps(out + c, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(out + c + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
  if (c < k) {
    float* o = out + c;
    for (int j = 0; j < 16; ++j) o[j] = 0.0f;
    for (int64_t i = c; i < k; ++i) o[(i - c) / 2 + ((i - c) % 2) * 8] = x[i];
  }
}

bool SplitForBf16(DType dt) { return dt == DType::kBF16; }
bool NoPackX(DType, int64_t) { return false; }

constexpr int64_t kBf16KChunk = 512;  // k per block: an MR-row strip of x (MR * 2 KiB) stays in L1

// Weights of one tile: NR rows starting at `w`, row stride k. The last, partial 16-chunk of each row is
// copied zero-padded into `tail` (NR * 16 elements) so no load reads past a row.
template <int MR, int NR>
void Bf16SplitTile(const float* xs, int64_t kp, const uint16_t* w, int64_t k, int64_t c0, int64_t c1,
                   const uint16_t* tail, __m256* park, bool first, bool last, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = first ? _mm256_setzero_ps() : park[i * NR + j];
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const int64_t full_end = k / 16 * 16;
  for (int64_t c = c0; c < c1; c += 16) {
    __m256 we[NR], wo[NR];
    for (int j = 0; j < NR; ++j) {
      const uint16_t* src = c < full_end ? w + j * k + c : tail + j * 16;
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      we[j] = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      wo[j] = _mm256_castsi256_ps(_mm256_and_si256(raw, hi));
    }
    for (int i = 0; i < MR; ++i) {
      const __m256 xe = _mm256_loadu_ps(xs + i * kp + c), xo = _mm256_loadu_ps(xs + i * kp + c + 8);
      for (int j = 0; j < NR; ++j) {
        acc[i][j] = _mm256_fmadd_ps(xe, we[j], acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(xo, wo[j], acc[i][j]);
      }
    }
  }
  if (last) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) y[i * ldy + j] = V256::ReduceAdd(acc[i][j]);
  } else {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) park[i * NR + j] = acc[i][j];
  }
}

using Bf16TileFn = void (*)(const float*, int64_t, const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*,
                            __m256*, bool, bool, float*, int64_t);

template <int NR>
Bf16TileFn Bf16TileFor(int mr) {
  switch (mr) {
    case 1: return &Bf16SplitTile<1, NR>;
    case 2: return &Bf16SplitTile<2, NR>;
    case 3: return &Bf16SplitTile<3, NR>;
    default: return &Bf16SplitTile<4, NR>;
  }
}

// Output columns [n_begin, n_end): blocks of kNb weight rows (kNb * k * 2 bytes, in L2) are swept by each
// 4-row strip of x, k-chunk by k-chunk, so the strip's chunk stays in L1 while every row pair of the block
// passes over it. m == 1 (decode) takes 4 weight rows at a time: more streams in flight, no reuse to keep.
void MatmulBf16Split(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  constexpr int kMr = 4;
  constexpr int64_t kMaxBlockRows = 256;
  const int64_t k = job.k, kp = SplitXCols(k), m = job.m;
  const uint16_t* w = static_cast<const uint16_t*>(job.w);
  const int nr = m == 1 ? 4 : 2;
  const int64_t nb = MinI(kMaxBlockRows, MaxI(16, (256 * 1024) / (k * 2) / 16 * 16));
  const int64_t kc = m == 1 ? kp : kBf16KChunk;
  const bool has_tail = k % 16 != 0;
  alignas(32) uint16_t tail[4 * 16];
  // Accumulators of one strip across one block, parked between k-chunks (32 KiB).
  __m256 park_storage[kMr * kMaxBlockRows];
  for (int64_t b0 = n_begin; b0 < n_end; b0 += nb) {
    const int64_t b1 = MinI(n_end, b0 + nb);
    for (int64_t m0 = 0; m0 < m; m0 += kMr) {
      const int mr = static_cast<int>(MinI(kMr, m - m0));
      const float* xs = job.xs + m0 * kp;
      float* y = job.y + m0 * job.n;
      for (int64_t c0 = 0; c0 < kp; c0 += kc) {
        const int64_t c1 = MinI(kp, c0 + kc);
        const bool first = c0 == 0, last = c1 == kp;
        for (int64_t o = b0; o < b1;) {
          const int step = b1 - o >= nr ? nr : 1;
          if (has_tail && c1 == kp) {
            for (int j = 0; j < step; ++j) {
              for (int e = 0; e < 16; ++e) {
                const int64_t at = k / 16 * 16 + e;
                tail[j * 16 + e] = at < k ? w[(o + j) * k + at] : 0;
              }
            }
          }
          __m256* park = park_storage + (o - b0) * kMr;
          Bf16TileFn fn = step == 4 ? Bf16TileFor<4>(mr) : step == 2 ? Bf16TileFor<2>(mr) : Bf16TileFor<1>(mr);
          fn(xs, kp, w + o * k, k, c0, c1, tail, park, first, last, y + o, job.n);
          o += step;
        }
      }
    }
  }
}

void MatmulAvx2(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.wdt == DType::kBF16 && job.xs != nullptr) return MatmulBf16Split(job, n_begin, n_end);
  MatmulFma<V256, 3, 4>(job, n_begin, n_end);
}

void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    out[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

bool NoBf16Dot(DType) { return false; }

}  // namespace

const CpuKernels& Avx2Kernels() {
  static const CpuKernels table = {
      "avx2",            &NoBf16Dot,         &MatmulAvx2,           &RoundToBf16,
      &ConvertRow<V256>, &RmsNormRow<V256>,  &AddRmsNormRow<V256>,  &SiluMul<V256>,
      &Rope<V256>,       &Attention<V256>,   &SplitForBf16,         &SplitXRow,
      &NoPackX,          nullptr,            nullptr};
  return table;
}

}  // namespace tpserve::kernels::cpu
