// W8 GEMV for decode with --quantization int8: y[m, n] = scales[n] * (x[m, k] · q[n, k]ᵀ), q int8 with one
// float32 scale per row (worker/model/quantization.h), x float32, m <= kGemvMaxRows, on the shared warp
// skeleton (gemv_warp_rows.cuh): 16 int8 weights per 16-byte load, dequantized in registers (int8 -> float,
// exact), fp32 accumulation in a batch-invariant order; the scale multiplies the warp's finished sum.
#include "kernels/cuda/gemv_warp_rows.cuh"

namespace tpserve::kernels::cuda {
namespace {

// Four int8 packed in a word (lowest byte first in memory) -> four floats.
__device__ __forceinline__ void Unpack4(uint32_t v, float* f) {
  f[0] = static_cast<float>(static_cast<int8_t>(v & 0xffu));
  f[1] = static_cast<float>(static_cast<int8_t>((v >> 8) & 0xffu));
  f[2] = static_cast<float>(static_cast<int8_t>((v >> 16) & 0xffu));
  f[3] = static_cast<float>(static_cast<int8_t>(v >> 24));
}

struct LoadInt8 {
  using Elem = int8_t;
  static constexpr int kPerChunk = 16;
  const float* __restrict__ scales;  // [n]
  __device__ __forceinline__ static void Unpack(const int4& v, float (&f)[16]) {
    Unpack4(static_cast<uint32_t>(v.x), f);
    Unpack4(static_cast<uint32_t>(v.y), f + 4);
    Unpack4(static_cast<uint32_t>(v.z), f + 8);
    Unpack4(static_cast<uint32_t>(v.w), f + 12);
  }
  __device__ __forceinline__ static float Scalar(const int8_t* w, int64_t i) { return static_cast<float>(w[i]); }
  __device__ __forceinline__ float Finish(float sum, int64_t row) const { return sum * scales[row]; }
};

}  // namespace

void LaunchGemvInt8(const float* x, int64_t m, const int8_t* w, const float* scales, int64_t n, int64_t k,
                    float* y, cudaStream_t stream) {
  gemv::Launch(x, m, w, LoadInt8{scales}, n, k, y, stream);
}

}  // namespace tpserve::kernels::cuda
