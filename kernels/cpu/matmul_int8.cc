// The scalar int8 weight-only matmul and the per-ISA choice (see matmul_int8.h).
#include "kernels/cpu/matmul_int8.h"

#include "common/log.h"

namespace tpserve::kernels::cpu {

// Per element: four float accumulators over k in steps of 4, summed (a0 + a1) + (a2 + a3), then the
// k % 4 tail in order, then the scale.
void MatmulInt8Scalar(const Int8MatmulJob& job, int64_t n_begin, int64_t n_end) {
  const int64_t k = job.k;
  for (int64_t t = 0; t < job.m; ++t) {
    const float* x = job.x + t * k;
    for (int64_t r = n_begin; r < n_end; ++r) {
      const int8_t* w = job.w + r * k;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      int64_t c = 0;
      for (; c + 4 <= k; c += 4) {
        a0 += x[c] * static_cast<float>(w[c]);
        a1 += x[c + 1] * static_cast<float>(w[c + 1]);
        a2 += x[c + 2] * static_cast<float>(w[c + 2]);
        a3 += x[c + 3] * static_cast<float>(w[c + 3]);
      }
      float acc = (a0 + a1) + (a2 + a3);
      for (; c < k; ++c) acc += x[c] * static_cast<float>(w[c]);
      job.y[t * job.n + r] = acc * job.scales[r];
    }
  }
}

Int8Kernel Int8MatmulKernel(CpuIsa isa, bool avx512_bf16) {
  switch (isa) {
    case CpuIsa::kAmx:  // no AMX int8-weight tile path: see matmul_int8.h
    case CpuIsa::kAvx512:
      return avx512_bf16 ? Int8Kernel{&MatmulInt8Avx512Bf16, true} : Int8Kernel{&MatmulInt8Avx512, false};
    case CpuIsa::kAvx2: return {&MatmulInt8Avx2, false};
    case CpuIsa::kScalar: return {&MatmulInt8Scalar, false};
    case CpuIsa::kAuto: break;
  }
  TP_CHECK(false) << "Int8MatmulKernel needs a resolved ISA";
  return {};
}

}  // namespace tpserve::kernels::cpu
