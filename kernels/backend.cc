// Backend-independent helpers: CPU feature detection for runtime dispatch.
#include <cpuid.h>

#include "kernels/backend.h"

namespace tpserve::kernels {

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto: return "auto";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kScalar: return "scalar";
  }
  return "?";
}

CpuIsa DetectCpuIsa() {
  __builtin_cpu_init();
  // AVX-512 path needs F+BW+VL+DQ; avx512_bf16 is detected separately by the CPU backend.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

}  // namespace tpserve::kernels
