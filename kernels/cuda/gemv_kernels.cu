// Memory-bound GEMV for decode: y[m, n] = x[m, k] · w[n, k]ᵀ with 16-bit weights (bf16 / f16), m <= 8, on
// the shared warp skeleton (gemv_warp_rows.cuh: two rows per warp, 16-byte streaming loads, fp32
// accumulation, batch-invariant summation order).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/gemv_warp_rows.cuh"

namespace tpserve::kernels::cuda {
namespace {

// Two packed 16-bit values (low half first in memory) -> two floats.
template <int kDtype>
__device__ __forceinline__ void Unpack2(uint32_t word, float& lo, float& hi) {
  if constexpr (kDtype == kDevBF16) {
    lo = __uint_as_float(word << 16);
    hi = __uint_as_float(word & 0xffff0000u);
  } else {
    lo = F16BitsToFloat(static_cast<uint16_t>(word & 0xffffu));
    hi = F16BitsToFloat(static_cast<uint16_t>(word >> 16));
  }
}

// 16-bit weights: 8 per 16-byte load, no scale.
template <int kDtype>
struct Load16 {
  using Elem = uint16_t;
  static constexpr int kPerChunk = 8;
  __device__ __forceinline__ static void Unpack(const int4& v, float (&f)[8]) {
    Unpack2<kDtype>(static_cast<uint32_t>(v.x), f[0], f[1]);
    Unpack2<kDtype>(static_cast<uint32_t>(v.y), f[2], f[3]);
    Unpack2<kDtype>(static_cast<uint32_t>(v.z), f[4], f[5]);
    Unpack2<kDtype>(static_cast<uint32_t>(v.w), f[6], f[7]);
  }
  __device__ __forceinline__ static float Scalar(const uint16_t* w, int64_t i) {
    return kDtype == kDevBF16 ? Bf16BitsToFloat(w[i]) : F16BitsToFloat(w[i]);
  }
  __device__ __forceinline__ float Finish(float sum, int64_t) const { return sum; }
};

}  // namespace

void LaunchGemv16(const float* x, int64_t m, const void* w, int dtype, int64_t n, int64_t k, float* y,
                  cudaStream_t stream) {
  const auto* wp = static_cast<const uint16_t*>(w);
  if (dtype == kDevBF16) {
    gemv::Launch(x, m, wp, Load16<kDevBF16>{}, n, k, y, stream);
  } else {
    TP_CHECK(dtype == kDevF16) << "GEMV weight dtype " << dtype;
    gemv::Launch(x, m, wp, Load16<kDevF16>{}, n, k, y, stream);
  }
}

}  // namespace tpserve::kernels::cuda
