// Device helpers shared by the .cu files: warp/block reductions in a fixed order (so results are
// bitwise reproducible) and loads of weights stored as f32 / bf16 / f16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tpserve::kernels::cuda {

// Matches tpserve::DType's values (kF32 = 0, kBF16 = 1, kF16 = 2); kernels take it as an int.
constexpr int kDevF32 = 0;
constexpr int kDevBF16 = 1;
constexpr int kDevF16 = 2;

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

__device__ __forceinline__ float F16BitsToFloat(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

// Element i of a weight in its stored dtype, as float. `dtype` is uniform across the block.
__device__ __forceinline__ float LoadWeight(const void* w, int dtype, int64_t i) {
  if (dtype == kDevBF16) return Bf16BitsToFloat(static_cast<const uint16_t*>(w)[i]);
  if (dtype == kDevF16) return F16BitsToFloat(static_cast<const uint16_t*>(w)[i]);
  return static_cast<const float*>(w)[i];
}

// Butterfly reduction: every lane ends with the same, order-fixed sum.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `shared` needs 32 floats. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < num_warps ? shared[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < num_warps ? shared[lane] : -INFINITY;
  return WarpMax(v);
}

// A 16-byte load of data read once per step (weights): through the read-only path, not kept in L1.
__device__ __forceinline__ int4 LoadStreaming(const int4* p) {
#ifdef __CUDA_ARCH__
  int4 r;
  asm("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
#else
  return __ldg(p);  // host pass / CPU emulation (tests/cuda_emu)
#endif
}

inline unsigned int CeilDivU(int64_t a, int64_t b) { return static_cast<unsigned int>((a + b - 1) / b); }

}  // namespace tpserve::kernels::cuda
