// --quantization: weights quantized while a checkpoint loads (weight-only; activations stay float32).
//
// int8: symmetric, per output channel. Each row r of a projection gets scale[r] = max|w[r, :]| / 127 and
// q[r, c] = round(w[r, c] / scale[r]) in [-127, 127] (round half away from zero, as llama.cpp's Q8_0).
// The matmul applies scale[r] to each finished dot product (kernels/backend.h).
//
// Tensor parallelism: each rank quantizes only what it keeps, but the scale of a row is always taken
// over the WHOLE checkpoint row:
//   - column-split weights (q/k/v, gate/up) keep whole rows, so this is the rank's own rows;
//   - row-split weights (o_proj, down) keep a column range; the rank reads the full rows chunk by chunk
//     (at load only) for the max, and stores only its columns with the whole row's scale.
// So every rank holds exactly the int8 values and scales a TP=1 load holds for its slice: a row-split
// rank's partial output is scale[r] * (its part of the integer-weighted dot product), already
// dequantized, and the all-reduce sums float partials exactly as it does for bf16 weights. (A scale from
// the rank's own slice would also be correct, but would quantize differently at every --tp, so TP=2
// output could drift from TP=1; the whole-row scale costs one extra read of o_proj/down at load.)
//
// What is quantized: the four projections of every layer (qkv, o_proj, gate_up, down). Embedding and
// lm_head stay in the checkpoint dtype (or --dtype); lm_head too becomes int8 with quantize_lm_head.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tpserve::model {

enum class WeightQuantization { kNone, kInt8 };

// "none" (or "") and "int8" -- the --quantization values. INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<WeightQuantization> ParseWeightQuantization(absl::string_view name);
const char* WeightQuantizationName(WeightQuantization q);  // "none", "int8"

// Quantizes `rows` rows of src ([rows, src_cols] float32) to int8: row r's scale from all src_cols
// columns, the stored values only columns [c0, c1). dst: [rows, c1 - c0]; scales: [rows].
// An all-zero row gets scale 0 and zeros.
void QuantizeRowsInt8(const float* src, int64_t rows, int64_t src_cols, int64_t c0, int64_t c1, int8_t* dst,
                      float* scales);

}  // namespace tpserve::model
