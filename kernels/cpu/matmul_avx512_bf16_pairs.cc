// Weight-stationary vdpbf16ps matmul over bf16 weights repacked into pair panels (bf16_pair_panels.h), for
// AVX-512 CPUs with avx512_bf16 and no AMX (Zen 4/5). Built with AVX-512 flags (kernels/CMakeLists.txt,
// *avx512* glob) and only reached through runtime dispatch.
//
// Why this layout: with row-major weights every output element is a 16-lane accumulator that needs a
// horizontal sum, and a register tile of tokens x rows must reload x for every row; at 16 tokens that
// kernel topped out near 55% of the vdpbf16ps peak on Zen 5. Here one 64-byte load of a panel's pair q is
// the operand of 16 output columns, each token's x pair is a 32-bit broadcast, and a tile of T tokens x P
// panels keeps T * P accumulators in zmm registers with nothing to reduce at the end. At m = 16 every
// weight byte is read from memory once and used by all 16 tokens (T = 16, P = 1); at m = 1 the tile runs
// P = 4 panel streams side by side so the dependency chains do not bind and decode stays at the memory
// bandwidth.
//
// Arithmetic (the batch-invariance contract of cpu_kernels.h): y[t, o] is lane o % 16 of one float32
// accumulator, vdpbf16ps over the pairs q = 0, 1, ..., in order, then the odd-k tail pair (x[k-1], 0)
// against (W[o, k-1], 0). Tile shapes, token groups, thread splits and m only decide which elements run
// side by side, never that order: every m, from decode to prefill, gives the same bits per element.
//
// Loop order per call (a range of whole panels): chunks of token groups of 16 (kXChunkBytes of packed x),
// then tiles of panels, then the chunk's groups; a panel (16 * k bf16: 64 KiB at k = 2048) is read from
// memory once per chunk and from L2 by the chunk's other groups, x streams from L2/L3. (Chunks of 384 KiB,
// x kept in L2, measured the same or up to 4% slower at m = 512.)
#include "kernels/cpu/pair_tiles_avx512_bf16.h"

namespace tpserve::kernels::cpu {

void MatmulAvx512Bf16Pairs(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  if (job.wdt != DType::kI8) return RunPairs<Bf16Weights>(job, n_begin, n_end, /*widen=*/nullptr);
  // int8 sign-magnitude blocks (CPUs with AVX512-VBMI): their own loader, matmul_int8_pairs_avx512vbmi.cc.
  if (job.int8_blocks) return MatmulInt8PairsVbmi(job, n_begin, n_end);
  // int8: up to one group (decode, batched decode) each weight byte is read once and widened in registers;
  // beyond (prefill) every tile's panels are widened once per chunk and reused by all its groups.
  if (job.m <= kGroup) return RunPairs<Int8Weights>(job, n_begin, n_end, /*widen=*/nullptr);
  RunPairs<Bf16Weights>(job, n_begin, n_end, &WidenInt8Panels);
}

}  // namespace tpserve::kernels::cpu
