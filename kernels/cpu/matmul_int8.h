// Weight-only int8 matmul of the CPU backend (--quantization int8): y[t, r] = scales[r] * (x[t, :] ·
// w[r, :]), w int8 [n, k] with one float32 scale per output row (symmetric, per channel). The int8 weights
// are widened in registers (exactly: |q| <= 127) and multiplied with x in float32, or with x rounded to
// bf16 on CPUs with avx512_bf16 (as bf16 weights' matmul already takes it); activations are never
// quantized to 8 bits.
//
// One kernel per ISA; cpu_backend.cc picks it from the backend's CpuIsa and splits rows over threads:
//   scalar   matmul_int8.cc         4 float accumulators, fixed pairwise sum
//   avx2     matmul_int8_avx2.cc    vpmovsxbd + vcvtdq2ps + vfmadd, 8 lanes
//   avx512   matmul_int8_avx512.cc  vpmovsxbd + vcvtdq2ps + vfmadd, 16 lanes, masked k tail (no avx512_bf16)
//   avx512 + avx512_bf16            matmul_int8_avx512_bf16.cc: int8 widened to bf16, vdpbf16ps against x
//                                   rounded to bf16, for every m. Only for row-major weights: a model's int8
//                                   weights are repacked at load (Backend::PackMatmulWeight) into the pair
//                                   panels of bf16_pair_panels.h and run by matmul_avx512_bf16_pairs.cc instead
//                                   (widened in registers inside its weight-stationary tiles; faster for every m)
//                                   With AVX512-VBMI the panels are stored as kInt8PairBlocks and widened by byte
//                                   lookups (matmul_int8_pairs_avx512vbmi.cc): half the instructions, same bits
//   amx      the avx512 + avx512_bf16 kernel: AMX has no int8-weight / float-activation tile op (AMX-INT8
//            needs int8 activations too), and no AMX machine was at hand to build and measure a tile path.
//            Untested on AMX hardware beyond what that kernel itself is tested for.
// Batch invariance: every output element is one accumulator walked over k in the same order, reduced by
// the same tree, whatever m, the register tile it lands in, the row range or the thread. Kernels of
// different ISAs differ from each other in the low bits, each within tolerance of the reference.
//
// Why one path for every m, and why bf16 rather than VNNI vpdpbusd on per-token int8 activations: a token's
// result must not depend on whether it shares the call with others, so decode and prefill run the same
// arithmetic; the vdpbf16ps path measured 1.2-1.5x faster than float32 FMA for m > 1 and the same at m = 1,
// at a small quality cost still below llama.cpp Q8_0's (docs/QUANTIZATION.md). W8A8 with VNNI was not tried.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace tpserve::kernels::cpu {

struct Int8MatmulJob {
  const float* x = nullptr;       // [m, k]
  const uint16_t* xb = nullptr;   // [m, k] x rounded to bf16, for kernels with Int8Kernel::bf16_x
  int64_t m = 0;
  int64_t k = 0;
  const int8_t* w = nullptr;      // [n, k]
  const float* scales = nullptr;  // [n]
  int64_t n = 0;
  float* y = nullptr;             // [m, n]
};

// Computes y[:, n_begin:n_end] for all m rows of x. Single-threaded.
using Int8MatmulFn = void (*)(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end);

void MatmulInt8Scalar(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end);
void MatmulInt8Avx2(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end);
void MatmulInt8Avx512(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end);
void MatmulInt8Avx512Bf16(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end);  // reads job.xb

struct Int8Kernel {
  Int8MatmulFn fn = nullptr;
  bool bf16_x = false;  // fn reads job.xb (x rounded to bf16) instead of job.x
};
// The kernel the CPU backend uses for `isa` (kAmx -> the AVX-512 kernel); avx512_bf16 selects the vdpbf16ps
// one on kAvx512 / kAmx. kAuto is not accepted.
Int8Kernel Int8MatmulKernel(CpuIsa isa, bool avx512_bf16);

}  // namespace tpserve::kernels::cpu
