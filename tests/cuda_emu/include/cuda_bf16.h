#pragma once
#include <cstdint>
#include "common/dtype.h"
struct __nv_bfloat16 { uint16_t bits; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{tpserve::F32ToBF16(f)}; }
