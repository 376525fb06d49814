// The one tensor-core primitive the CUDA kernels use: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// (sm_80+), D[16x8] = A[16x16] * B[16x8] + C, bf16 inputs, fp32 accumulate. All 32 lanes of the warp
// take part; each holds a fixed piece of every matrix (the PTX ISA's "Matrix fragments for
// mma.m16n8k16 with floating point type"). With g = lane / 4 (groupID) and t = lane % 4
// (threadID_in_group), and each .b32 register holding two bf16, the lower-indexed one in the low half:
//   A (row-major, 4 regs):  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                           a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (column-major, 2 regs, B[k][n]):  b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C, D (fp32, 4 regs):    c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// So an accumulator tile of one mma (two n-halves of 8 columns) is, register for register, the A
// fragment of the next mma once rounded to bf16 (FlashAttention-2 keeps P in registers this way).
// The CPU emulation (tests/cuda_emu/emu.h, TPSERVE_CUDA_EMU) implements the same contract.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpserve::kernels::cuda {

// d += a * b with the fragment layouts above.
__device__ __forceinline__ void MmaBf16M16N8K16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(TPSERVE_CUDA_EMU)
  ::emu::MmaBf16M16N8K16(d, a, b);
#else
  (void)d, (void)a, (void)b;  // nvcc's host pass: device code, never run on the host
#endif
}

// Two floats rounded to nearest-even bf16, packed as one mma register (lo in the low half). Bit
// arithmetic rather than __floats2bfloat162_rn so the emulation rounds exactly as the device does;
// inputs are finite (scaled queries, softmax weights in [0, 1]).
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  uint32_t a = __float_as_uint(lo), b = __float_as_uint(hi);
  a = (a + 0x7fffu + ((a >> 16) & 1u)) >> 16;
  b = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  return a | (b << 16);
}

}  // namespace tpserve::kernels::cuda
