// Backend-independent helpers: CPU feature detection for runtime dispatch.
#include "kernels/backend.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace tpserve::kernels {
namespace {

// AMX-TILE + AMX-BF16 (CPUID.7.0:EDX[24], [22]), the OS saving tile state (XCR0 bits 17-18), and this
// process allowed to use it: Linux (5.16+) hands out the 8 KiB tile-data state only on request.
bool AmxUsable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if ((d & (1u << 24)) == 0 || (d & (1u << 22)) == 0) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || (c & bit_OSXSAVE) == 0) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto:
      return "auto";
    case CpuIsa::kAmx:
      return "amx";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kScalar:
      return "scalar";
  }
  return "?";
}

bool ParseCpuIsa(const std::string& s, CpuIsa* isa) {
  for (CpuIsa i : {CpuIsa::kAuto, CpuIsa::kAmx, CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kScalar}) {
    if (s == CpuIsaName(i)) {
      *isa = i;
      return true;
    }
  }
  return false;
}

CpuIsa DetectCpuIsa() {
  __builtin_cpu_init();
  // AVX-512 path needs F+BW+VL+DQ; avx512_bf16 is detected separately by the CPU backend.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    static const bool amx = __builtin_cpu_supports("avx512bf16") && AmxUsable();
    return amx ? CpuIsa::kAmx : CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

}  // namespace tpserve::kernels
