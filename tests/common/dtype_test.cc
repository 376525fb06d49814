// dtype conversions against IEEE-754 bit patterns worked out by hand (not from our own code).
#include "common/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace tpserve {
namespace {

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_STREQ(DTypeName(DType::kBF16), "bfloat16");
  EXPECT_EQ(*ParseDType("F32"), DType::kF32);
  EXPECT_EQ(*ParseDType("float32"), DType::kF32);
  EXPECT_EQ(*ParseDType("BF16"), DType::kBF16);
  EXPECT_EQ(*ParseDType("bfloat16"), DType::kBF16);
  EXPECT_EQ(*ParseDType("F16"), DType::kF16);
  EXPECT_EQ(*ParseDType("float16"), DType::kF16);
  auto bad = ParseDType("int8");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("int8"), std::string::npos);
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToBF16(Bits(0x3f808000)), 0x3f80);  // exactly halfway, even stays
  EXPECT_EQ(F32ToBF16(Bits(0x3f818000)), 0x3f82);  // exactly halfway, odd rounds up
  EXPECT_EQ(F32ToBF16(Bits(0x3f808001)), 0x3f81);  // just above halfway
  EXPECT_EQ(F32ToBF16(Bits(0x3f807fff)), 0x3f80);  // just below halfway
  EXPECT_EQ(F32ToBF16(Bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to +inf
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  uint16_t nan = F32ToBF16(Bits(0x7f800001));  // a NaN whose payload sits in the dropped bits
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
  EXPECT_EQ(BF16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToF32(0x4049), 3.140625f);
  EXPECT_EQ(BF16ToF32(0x0001), Bits(0x00010000));  // subnormal widens exactly
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);   // largest finite half
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);   // halfway to 65536 rounds to inf
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);   // smallest normal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);   // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);   // halfway to it: ties to even (0)
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);   // 1.5 ulp ties to even (2)
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, even
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::nanf("")) & 0x7c00, 0x7c00);
  EXPECT_NE(F32ToF16(std::nanf("")) & 0x03ff, 0);
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(F16ToF32(0xfbff), -65504.0f);
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
}

TEST(DTypeTest, F16RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf / NaN
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(DTypeTest, ConvertToF32) {
  const uint16_t bf[3] = {0x3f80, 0xc040, 0x3e80};  // 1, -3, 0.25
  const uint16_t hf[3] = {0x3c00, 0xc200, 0x3400};  // 1, -3, 0.25
  const float f[3] = {1.0f, -3.0f, 0.25f};
  float out[3];
  ConvertToF32(bf, DType::kBF16, 3, out);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], f[i]);
  ConvertToF32(hf, DType::kF16, 3, out);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], f[i]);
  ConvertToF32(f, DType::kF32, 3, out);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], f[i]);
}

}  // namespace
}  // namespace tpserve
