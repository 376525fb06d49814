// AVX-512 (F/BW/VL/DQ) CPU kernels; BF16 weights use vdpbf16ps when avx512_bf16 is present. Built with
// AVX-512 flags (kernels/CMakeLists.txt) and only reached through runtime dispatch.
// GCC 12 false positives: its AVX-512 intrinsics seed results with self-initialised _mm512_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/kernels_impl.h"

namespace tpserve::kernels::cpu {
namespace {

struct V512 {
  using T = __m512;
  static constexpr int L = 16;
  static T Zero() { return _mm512_setzero_ps(); }
  static T Set1(float v) { return _mm512_set1_ps(v); }
  static T Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T LoadN(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static void StoreN(float* p, T v, int n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v); }
  static T LoadBF16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static T LoadF16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static T Add(T a, T b) { return _mm512_add_ps(a, b); }
  static T Sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T Mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T Div(T a, T b) { return _mm512_div_ps(a, b); }
  static T Max(T a, T b) { return _mm512_max_ps(a, b); }
  static T Fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  // Fixed tree: 256-bit halves, then 128-bit halves, then pairs.
  static float ReduceAdd(T v) {
    // shuffle_f32x4 instead of extractf64x4: GCC 12 warns on the latter's _mm256_undefined_pd.
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
  }
  // Cephes-style expf; inputs clamped to [-87, 88] so 2^n stays a normal float.
  static T Exp(T x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const T fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    T y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  }
};

// vdpbf16ps tile: one 16-lane accumulator per element over k in steps of 32 bf16 pairs, zero-masked
// tail, then V512::ReduceAdd — identical for every tile shape (batch invariance).
struct Bf16DotTile {
  template <int MR, int NR>
  static void Run(const MatmulJob& job, int64_t m0, int64_t n0) {
    const int64_t k = job.k;
    const uint16_t* x = job.xb + m0 * k;
    const uint16_t* w = static_cast<const uint16_t*>(job.w) + n0 * k;
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    int64_t kk = 0;
    for (; kk + 32 <= k; kk += 32) {
      __m512bh xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(x + i * k + kk);
      for (int j = 0; j < NR; ++j) {
        const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + j * k + kk);
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
      }
    }
    if (kk < k) {
      const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - kk)) - 1);
      __m512bh xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + i * k + kk);
      for (int j = 0; j < NR; ++j) {
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * k + kk);
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) job.y[(m0 + i) * job.n + n0 + j] = V512::ReduceAdd(acc[i][j]);
  }
};

void MatmulAvx512(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  MatmulFma<V512, 4, 6>(job, n_begin, n_end);
}

// Unpacked x: the AMX table's fallback for k % 32 != 0 (same arithmetic as the packed kernel).
void MatmulAvx512Bf16(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.wdt == DType::kBF16) return MatmulDriver<Bf16DotTile, 4, 6>(job, n_begin, n_end, 2);
  MatmulFma<V512, 4, 6>(job, n_begin, n_end);
}

// One strip of tokens or fewer (decode at batch <= 4) is weight-streaming bound: the untiled kernel reads
// each weight row once, in order, which the hardware prefetcher follows at full bandwidth; the tiled
// kernel's k blocks and software prefetch only add work there. Both give the same bits.
void MatmulAvx512Bf16Tiled(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.xp != nullptr && job.m > kBf16StripTokens) return MatmulAvx512Bf16Packed(job, n_begin, n_end);
  MatmulAvx512Bf16(job, n_begin, n_end);
}

bool Bf16PacksX(DType dt, int64_t) { return dt == DType::kBF16; }

void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)b);
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, (__m256i)b);
  }
}

// The plain table never rounds x (no bf16 dot) but keeps a valid entry that needs no avx512_bf16.
void RoundToBf16Portable(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    out[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

// AMX tiles take 32 k per step; other k (never a real Llama shape) keep the vdpbf16ps path, for every m.
bool AmxPacksX(DType dt, int64_t k) { return dt == DType::kBF16 && k > 0 && k % 32 == 0; }

void MatmulAmxOrAvx512Bf16(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.xp != nullptr) return MatmulAmxBf16(job, n_begin, n_end);
  MatmulAvx512Bf16(job, n_begin, n_end);
}

bool NoBf16Dot(DType) { return false; }
bool NoSplitX(DType) { return false; }
bool NoPackX(DType, int64_t) { return false; }
bool Bf16DotForBf16(DType dt) { return dt == DType::kBF16; }

}  // namespace

const CpuKernels& Avx512Kernels(bool with_bf16) {
  static const CpuKernels plain = {
      "avx512",          &NoBf16Dot,         &MatmulAvx512,         &RoundToBf16Portable,
      &ConvertRow<V512>, &RmsNormRow<V512>,  &AddRmsNormRow<V512>,  &SiluMul<V512>,
      &Rope<V512>,       &Attention<V512>,   &NoSplitX,             nullptr,
      &NoPackX,          nullptr,            nullptr};
  static const CpuKernels bf16 = {
      "avx512-bf16",     &Bf16DotForBf16,    &MatmulAvx512Bf16Tiled, &RoundToBf16,
      &ConvertRow<V512>, &RmsNormRow<V512>,  &AddRmsNormRow<V512>,   &SiluMul<V512>,
      &Rope<V512>,       &Attention<V512>,   &NoSplitX,              nullptr,
      &Bf16PacksX,       &PackXAvx512Bf16Block, &MatmulAvx512Bf16Pairs};
  return with_bf16 ? bf16 : plain;
}

const CpuKernels& AmxKernels() {
  static const CpuKernels amx = {
      "amx-bf16",        &Bf16DotForBf16,    &MatmulAmxOrAvx512Bf16, &RoundToBf16,
      &ConvertRow<V512>, &RmsNormRow<V512>,  &AddRmsNormRow<V512>,   &SiluMul<V512>,
      &Rope<V512>,       &Attention<V512>,   &NoSplitX,              nullptr,
      &AmxPacksX,        &PackXAmxBlock,     nullptr};
  return amx;
}

}  // namespace tpserve::kernels::cpu
