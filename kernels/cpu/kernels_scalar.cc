// Baseline x86-64 CPU kernels (kScalar): the generic kernels over an 8-wide array type that the compiler
// may auto-vectorise with SSE2 only. Runs on any x86-64 CPU.
#include "kernels/cpu/kernels_impl.h"

namespace tpserve::kernels::cpu {
namespace {

struct VScalar {
  struct T {
    float v[8];
  };
  static constexpr int L = 8;
  static T Zero() { return T{}; }
  static T Set1(float x) {
    T r;
    for (int i = 0; i < L; ++i) r.v[i] = x;
    return r;
  }
  static T Load(const float* p) {
    T r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static void Store(float* p, T v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static T LoadN(const float* p, int n) {
    T r{};
    std::memcpy(r.v, p, n * sizeof(float));
    return r;
  }
  static void StoreN(float* p, T v, int n) { std::memcpy(p, v.v, n * sizeof(float)); }
  static T LoadBF16(const uint16_t* p) {
    T r;
    for (int i = 0; i < L; ++i) r.v[i] = Bf16Bits(p[i]);
    return r;
  }
  static T LoadF16(const uint16_t* p) {
    T r;
    for (int i = 0; i < L; ++i) r.v[i] = F16ToF32(p[i]);
    return r;
  }
#define TP_SCALAR_BINOP(name, expr) \
  static T name(T a, T b) {         \
    T r;                            \
    for (int i = 0; i < L; ++i) {   \
      const float x = a.v[i];       \
      const float y = b.v[i];       \
      r.v[i] = (expr);              \
    }                               \
    return r;                       \
  }
  TP_SCALAR_BINOP(Add, x + y)
  TP_SCALAR_BINOP(Sub, x - y)
  TP_SCALAR_BINOP(Mul, x * y)
  TP_SCALAR_BINOP(Div, x / y)
  TP_SCALAR_BINOP(Max, x > y ? x : y)
#undef TP_SCALAR_BINOP
  // Baseline x86-64 has no FMA: multiply then add (ISO mode, so the compiler does not contract it).
  static T Fma(T a, T b, T c) {
    T r;
    for (int i = 0; i < L; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static float ReduceAdd(T v) {
    const float a0 = v.v[0] + v.v[4], a1 = v.v[1] + v.v[5], a2 = v.v[2] + v.v[6], a3 = v.v[3] + v.v[7];
    return (a0 + a2) + (a1 + a3);
  }
  static T Exp(T x) {
    T r;
    for (int i = 0; i < L; ++i) r.v[i] = std::exp(x.v[i]);
    return r;
  }
};

void MatmulScalar(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  MatmulFma<VScalar, 2, 4>(job, n_begin, n_end);
}

void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    out[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

bool NoBf16Dot(DType) { return false; }
bool NoSplitX(DType) { return false; }
bool NoPackX(DType, int64_t) { return false; }

}  // namespace

const CpuKernels& ScalarKernels() {
  static const CpuKernels table = {
      "scalar",             &NoBf16Dot,            &MatmulScalar,           &RoundToBf16,
      &ConvertRow<VScalar>, &RmsNormRow<VScalar>,  &AddRmsNormRow<VScalar>, &SiluMul<VScalar>,
      &Rope<VScalar>,       &Attention<VScalar>,   &NoSplitX,               nullptr,
      &NoPackX,             nullptr,               nullptr};
  return table;
}

}  // namespace tpserve::kernels::cpu
