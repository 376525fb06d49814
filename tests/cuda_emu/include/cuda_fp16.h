#pragma once
#include <cstdint>
#include "common/dtype.h"
struct __half { uint16_t bits; };
inline float __half2float(__half h) { return tpserve::F16ToF32(h.bits); }
inline __half __float2half_rn(float f) { return __half{tpserve::F32ToF16(f)}; }
inline __half __ushort_as_half(uint16_t b) { return __half{b}; }
