// ReadSlice: rows and columns against slices computed by hand from the raw tensor bytes, dtype
// conversion, strided (non-contiguous) PyTorch views, the threaded large-copy path and argument errors.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"
#include "tools/checkpoint/pickle_writer.h"
#include "tools/checkpoint/safetensors_writer.h"
#include "tools/checkpoint/zip_writer.h"

namespace tpserve::checkpoint {
namespace {

using testing::ScopedTempDir;

float RawF32(const TensorInfo& t, int64_t r, int64_t c) {
  float v;
  std::memcpy(&v, t.data + (r * t.strides[0] + c * t.strides[1]) * 4, 4);
  return v;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), bytes.size());
}

TEST(CheckpointSliceTest, RowsAndColumnsMatchManualSlice) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const std::string name = "model.layers.2.mlp.down_proj.weight";  // [64, 172]
  auto t = (*ck)->Get(name);
  ASSERT_TRUE(t.ok());
  const TensorInfo& info = **t;
  ASSERT_EQ(info.shape, (std::vector<int64_t>{64, 172}));

  std::vector<float> rows((24 - 8) * 172);
  ASSERT_TRUE((*ck)->ReadSlice(name, {64, 172}, 0, 8, 24, DType::kF32, rows.data()).ok());
  for (int64_t r = 0; r < 16; ++r)
    for (int64_t c = 0; c < 172; ++c) ASSERT_EQ(rows[r * 172 + c], RawF32(info, r + 8, c));

  std::vector<float> cols(64 * (101 - 43));
  ASSERT_TRUE((*ck)->ReadSlice(name, {64, 172}, 1, 43, 101, DType::kF32, cols.data()).ok());
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t c = 0; c < 58; ++c) ASSERT_EQ(cols[r * 58 + c], RawF32(info, r, c + 43));

  // Conversion on the way: bf16 and f16 equal the scalar conversions of the f32 values.
  std::vector<uint16_t> bf(64 * 58), hf(64 * 58);
  ASSERT_TRUE((*ck)->ReadSlice(name, {64, 172}, 1, 43, 101, DType::kBF16, bf.data()).ok());
  ASSERT_TRUE((*ck)->ReadSlice(name, {64, 172}, 1, 43, 101, DType::kF16, hf.data()).ok());
  for (size_t i = 0; i < cols.size(); ++i) {
    ASSERT_EQ(bf[i], F32ToBF16(cols[i]));
    ASSERT_EQ(hf[i], F32ToF16(cols[i]));
  }

  // 1-D
  auto norm = (*ck)->Get("model.norm.weight");
  ASSERT_TRUE(norm.ok());
  std::vector<float> n(20);
  ASSERT_TRUE((*ck)->ReadSlice("model.norm.weight", {64}, 0, 30, 50, DType::kF32, n.data()).ok());
  for (int i = 0; i < 20; ++i) {
    float ref;
    std::memcpy(&ref, (*norm)->data + (30 + i) * 4, 4);
    ASSERT_EQ(n[i], ref);
  }
}

TEST(CheckpointSliceTest, ArgumentErrorsNameTheTensor) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  std::vector<float> buf(64 * 64);
  absl::Status s = (*ck)->ReadSlice("model.layers.0.self_attn.k_proj.weight", {64, 64}, 0, 0, 8, DType::kF32, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "model.layers.0.self_attn.k_proj.weight")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "[32, 64]")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "[64, 64]")) << s;

  s = (*ck)->ReadSlice("model.layers.9.mlp.up_proj.weight", {172, 64}, 0, 0, 8, DType::kF32, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), "model.layers.9.mlp.up_proj.weight")) << s;

  s = (*ck)->ReadSlice("model.norm.weight", {64}, 1, 0, 8, DType::kF32, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = (*ck)->ReadSlice("model.norm.weight", {64}, 0, 60, 65, DType::kF32, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = (*ck)->ReadSlice("model.norm.weight", {64}, 0, 10, 5, DType::kF32, buf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// A PyTorch zip whose tensors are non-contiguous views into shared storages, as torch.save keeps
// them (e.g. a saved transpose): element (r, c) lives at storage[offset + r * s0 + c * s1].
TEST(CheckpointSliceTest, StridedPytorchViewsAreHonoured) {
  ScopedTempDir tmp("ckpt-strided");
  const std::string& dir = tmp.path;
  const int64_t kStorage = 200;
  std::vector<float> storage(kStorage);
  for (int64_t i = 0; i < kStorage; ++i) storage[i] = 0.25f * i - 7.0f + 1.0f / (i + 3);
  std::vector<uint16_t> storage_bf(kStorage);
  for (int64_t i = 0; i < kStorage; ++i) storage_bf[i] = F32ToBF16(storage[i]);

  std::vector<PickledTensorSpec> specs = {
      {"transposed", DType::kF32, "0", kStorage, 5, {7, 9}, {1, 7}},      // [7, 9] view of a [9, 7] block
      {"gapped", DType::kF32, "0", kStorage, 11, {6, 4}, {20, 3}},        // rows 20 apart, every 3rd column
      {"vec", DType::kF32, "0", kStorage, 2, {10}, {3}},
      {"bf", DType::kBF16, "1", kStorage, 1, {5, 8}, {1, 5}},
  };
  auto zip = ZipWriter::Create(dir + "/pytorch_model.bin");
  ASSERT_TRUE(zip.ok());
  std::string pkl = PickleStateDict(specs);
  ASSERT_TRUE((*zip)->AddEntry("archive/data.pkl", pkl.data(), pkl.size()).ok());
  ASSERT_TRUE((*zip)->AddEntry("archive/data/0", storage.data(), storage.size() * 4).ok());
  ASSERT_TRUE((*zip)->AddEntry("archive/data/1", storage_bf.data(), storage_bf.size() * 2).ok());
  ASSERT_TRUE((*zip)->Finish().ok());

  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  for (const auto& spec : specs) {
    auto at = [&](int64_t r, int64_t c) {
      int64_t idx = spec.storage_offset + r * spec.strides[0] + (spec.shape.size() == 2 ? c * spec.strides[1] : 0);
      return spec.dtype == DType::kF32 ? storage[idx] : BF16ToF32(storage_bf[idx]);
    };
    if (spec.shape.size() == 1) {
      std::vector<float> out(6);
      ASSERT_TRUE((*ck)->ReadSlice(spec.name, spec.shape, 0, 3, 9, DType::kF32, out.data()).ok());
      for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], at(3 + i, 0));
      continue;
    }
    const int64_t R = spec.shape[0], C = spec.shape[1];
    std::vector<float> rows((R - 1) * C);
    ASSERT_TRUE((*ck)->ReadSlice(spec.name, spec.shape, 0, 1, R, DType::kF32, rows.data()).ok());
    for (int64_t r = 1; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(rows[(r - 1) * C + c], at(r, c)) << spec.name;
    std::vector<uint16_t> cols(R * (C - 2));
    ASSERT_TRUE((*ck)->ReadSlice(spec.name, spec.shape, 1, 1, C - 1, DType::kBF16, cols.data()).ok());
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 1; c < C - 1; ++c) EXPECT_EQ(cols[r * (C - 2) + c - 1], F32ToBF16(at(r, c))) << spec.name;
  }
}

// Big enough (48 MB) to take the multi-threaded copy path, in both same-dtype and converting modes.
TEST(CheckpointSliceTest, LargeSliceUsesAllRowsCorrectly) {
  ScopedTempDir tmp("ckpt-large");
  const std::string& dir = tmp.path;
  const int64_t R = 3072, C = 4096;
  std::string header = SafetensorsHeader({{"big", DType::kF32, {R, C}}}, {});
  {
    std::ofstream f(dir + "/model.safetensors", std::ios::binary);
    f.write(header.data(), header.size());
    std::vector<float> row(C);
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t c = 0; c < C; ++c) row[c] = static_cast<float>(r) + static_cast<float>(c) / C + 0.5f;
      f.write(reinterpret_cast<const char*>(row.data()), C * 4);
    }
  }
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  std::vector<float> out((R - 100) * C);
  ASSERT_TRUE((*ck)->ReadSlice("big", {R, C}, 0, 100, R, DType::kF32, out.data()).ok());
  size_t bad = 0;
  for (int64_t r = 100; r < R; ++r)
    for (int64_t c = 0; c < C; c += 7)
      bad += out[(r - 100) * C + c] != static_cast<float>(r) + static_cast<float>(c) / C + 0.5f;
  EXPECT_EQ(bad, 0u);
  std::vector<uint16_t> half(R * 2048);
  ASSERT_TRUE((*ck)->ReadSlice("big", {R, C}, 1, 2048, 4096, DType::kBF16, half.data()).ok());
  for (int64_t r = 0; r < R; r += 13)
    for (int64_t c = 0; c < 2048; c += 5)
      ASSERT_EQ(half[r * 2048 + c], F32ToBF16(static_cast<float>(r) + static_cast<float>(c + 2048) / C + 0.5f));
}

}  // namespace
}  // namespace tpserve::checkpoint
