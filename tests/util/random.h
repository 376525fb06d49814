// Deterministic test data: one splitmix64 stream (fast enough for real-size weights, 70M elements) behind
// the helpers the kernel tests share.
#pragma once

#include <cstdint>
#include <vector>

namespace tpserve::testing {

// A splitmix64 stream; seed s gives the same sequence on every machine.
class SplitMix64 {
 public:
  explicit SplitMix64(uint32_t seed) : state_(0x9e3779b97f4a7c15ull * (uint64_t{seed} + 1)) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) from the top 24 bits.
  float NextUnit() { return static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f); }

 private:
  uint64_t state_;
};

// n floats uniform in [lo, hi).
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  SplitMix64 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = lo + (hi - lo) * rng.NextUnit();
  return v;
}

}  // namespace tpserve::testing
