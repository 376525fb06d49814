// Loads the three shared stories260K checkpoints (safetensors f32, PyTorch zip f32 and bf16, each zip
// in 2 shards with float32 inv_freq buffers) and checks them against each other and config.json.
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "common/model_config.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"

namespace tpserve::checkpoint {
namespace {

// Expected HF tensor names and shapes, derived from config.json independently of the loader.
std::map<std::string, std::vector<int64_t>> ExpectedShapes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), i = c.intermediate_size;
  std::map<std::string, std::vector<int64_t>> m;
  m["model.embed_tokens.weight"] = {c.vocab_size, h};
  m["model.norm.weight"] = {h};
  m["lm_head.weight"] = {c.vocab_size, h};
  for (int l = 0; l < c.num_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    m[p + "input_layernorm.weight"] = {h};
    m[p + "post_attention_layernorm.weight"] = {h};
    m[p + "self_attn.q_proj.weight"] = {q, h};
    m[p + "self_attn.k_proj.weight"] = {kv, h};
    m[p + "self_attn.v_proj.weight"] = {kv, h};
    m[p + "self_attn.o_proj.weight"] = {h, q};
    m[p + "mlp.gate_proj.weight"] = {i, h};
    m[p + "mlp.up_proj.weight"] = {i, h};
    m[p + "mlp.down_proj.weight"] = {h, i};
  }
  return m;
}

int64_t Numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::vector<float> ReadAllF32(const Checkpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
  std::vector<float> out(Numel(shape));
  absl::Status s = ck.ReadSlice(name, shape, 0, 0, shape[0], DType::kF32, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(CheckpointSharedModelsTest, SafetensorsShapesMatchConfig) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  auto cfg = LoadModelConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->format(), "safetensors");
  auto expected = ExpectedShapes(*cfg);
  EXPECT_EQ((*ck)->TensorNames().size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto t = (*ck)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->shape, shape) << name;
    EXPECT_EQ((*t)->dtype, DType::kF32) << name;
  }
}

TEST(CheckpointSharedModelsTest, PytorchF32EqualsSafetensorsBitForBit) {
  TP_REQUIRE_SHARED(st_dir, "models/stories260K");
  TP_REQUIRE_SHARED(pt_dir, "models/stories260K-pt");
  auto cfg = LoadModelConfig(st_dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto st = Checkpoint::Open(st_dir);
  auto pt = Checkpoint::Open(pt_dir);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ((*pt)->format(), "pytorch");
  auto expected = ExpectedShapes(*cfg);
  // The .bin release also carries one rotary_emb.inv_freq buffer per layer.
  EXPECT_EQ((*pt)->TensorNames().size(), expected.size() + cfg->num_layers);
  for (const auto& [name, shape] : expected) {
    auto t = (*pt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->shape, shape) << name;
    EXPECT_EQ((*t)->dtype, DType::kF32) << name;
    std::vector<float> a = ReadAllF32(**st, name, shape);
    std::vector<float> b = ReadAllF32(**pt, name, shape);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << name;
    // Guard against comparing two all-zero buffers.
    double sumsq = 0;
    for (float v : a) sumsq += double(v) * v;
    EXPECT_GT(sumsq, 0.0) << name;
  }
}

TEST(CheckpointSharedModelsTest, PytorchBf16EqualsF32RoundedToBf16) {
  TP_REQUIRE_SHARED(st_dir, "models/stories260K");
  TP_REQUIRE_SHARED(pt_dir, "models/stories260K-pt-bf16");
  auto cfg = LoadModelConfig(st_dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto st = Checkpoint::Open(st_dir);
  auto pt = Checkpoint::Open(pt_dir);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_TRUE(pt.ok()) << pt.status();
  for (const auto& [name, shape] : ExpectedShapes(*cfg)) {
    auto t = (*pt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->dtype, DType::kBF16) << name;
    std::vector<float> ref = ReadAllF32(**st, name, shape);
    std::vector<uint16_t> got(ref.size());
    ASSERT_TRUE((*pt)->ReadSlice(name, shape, 0, 0, shape[0], DType::kBF16, got.data()).ok());
    size_t mismatches = 0;
    for (size_t i = 0; i < ref.size(); ++i) mismatches += got[i] != F32ToBF16(ref[i]);
    EXPECT_EQ(mismatches, 0u) << name;
    // Reading bf16 as f32 widens exactly.
    std::vector<float> widened = ReadAllF32(**pt, name, shape);
    for (size_t i = 0; i < ref.size(); i += 97) EXPECT_EQ(widened[i], BF16ToF32(F32ToBF16(ref[i]))) << name;
  }
}

TEST(CheckpointSharedModelsTest, InvFreqBuffersAreFloat32RopeFrequencies) {
  for (const char* rel : {"models/stories260K-pt", "models/stories260K-pt-bf16"}) {
    TP_REQUIRE_SHARED(dir, rel);
    auto cfg = LoadModelConfig(dir);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    auto ck = Checkpoint::Open(dir);
    ASSERT_TRUE(ck.ok()) << ck.status();
    const int half = cfg->head_dim / 2;
    for (int l = 0; l < cfg->num_layers; ++l) {
      std::string name = "model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq";
      auto t = (*ck)->Get(name);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ((*t)->dtype, DType::kF32);
      std::vector<float> v(half);
      ASSERT_TRUE((*ck)->ReadSlice(name, {half}, 0, 0, half, DType::kF32, v.data()).ok());
      for (int i = 0; i < half; ++i) {
        double ref = 1.0 / std::pow(double(cfg->rope_theta), 2.0 * i / cfg->head_dim);
        EXPECT_NEAR(v[i], ref, 1e-7 + 1e-6 * ref) << name << "[" << i << "]";
      }
    }
  }
}

}  // namespace
}  // namespace tpserve::checkpoint
