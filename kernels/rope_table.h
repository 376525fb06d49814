// The RoPE cos/sin table a backend with a fused RoPE + KV-write kernel reads (Backend::RopeWriteKv):
// built once at load for positions [0, max_position_embeddings), with the reference backend's float32
// numbers (HF Llama: inv_freq = 1 / float(theta ^ (2i / d)) in double, angle = float(position) *
// inv_freq in float, cos and sin of that angle in double, rounded to float).
#pragma once

#include <vector>

namespace tpserve::kernels {

// [positions, head_dim / 2, 2]: {cos, sin} of rotary pair i at each position.
std::vector<float> RopeCosSinTable(float theta, int head_dim, int positions);

}  // namespace tpserve::kernels
