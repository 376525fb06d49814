// Synthetic checkpoints: presets, both layouts round-tripped through Checkpoint::Open, sharding with
// index files, determinism, and weight statistics that keep activations sane.
#include "tools/model/synthetic_model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"

namespace tpserve::model {
namespace {

using testing::ScopedTempDir;

using checkpoint::Checkpoint;

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

int64_t Numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::vector<float> ReadAll(const Checkpoint& ck, const std::string& name) {
  auto t = ck.Get(name);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return {};
  std::vector<float> out(Numel((*t)->shape));
  absl::Status s = ck.ReadSlice(name, (*t)->shape, 0, 0, (*t)->shape[0], DType::kF32, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(SyntheticModelTest, Presets) {
  auto tiny = PresetConfig("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->hidden_size, 256);
  EXPECT_EQ(tiny->num_layers, 4);
  EXPECT_EQ(tiny->num_heads, 8);
  EXPECT_EQ(tiny->num_kv_heads, 4);
  EXPECT_EQ(tiny->head_dim, 32);
  EXPECT_EQ(tiny->intermediate_size, 688);
  EXPECT_EQ(tiny->vocab_size, 512);
  EXPECT_EQ(tiny->max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(tiny->rms_norm_eps, 1e-5f);
  auto big = PresetConfig("llama-2-13b");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->hidden_size, 5120);
  EXPECT_EQ(big->num_layers, 40);
  EXPECT_EQ(big->num_heads, 40);
  EXPECT_EQ(big->num_kv_heads, 40);
  EXPECT_EQ(big->head_dim, 128);
  EXPECT_EQ(big->intermediate_size, 13824);
  EXPECT_EQ(big->vocab_size, 32000);
  EXPECT_EQ(big->max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(big->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(big->rope_theta, 1e4f);
  auto bench = PresetConfig("bench-0.9b");  // bench/compare-llamacpp's model
  ASSERT_TRUE(bench.ok());
  EXPECT_EQ(bench->hidden_size, 2048);
  EXPECT_EQ(bench->num_layers, 16);
  EXPECT_EQ(bench->num_heads, 16);
  EXPECT_EQ(bench->num_kv_heads, 16);
  EXPECT_EQ(bench->head_dim, 128);
  EXPECT_EQ(bench->intermediate_size, 5504);
  EXPECT_EQ(bench->vocab_size, 32000);
  EXPECT_EQ(bench->max_position_embeddings, 4096);
  EXPECT_FLOAT_EQ(bench->rms_norm_eps, 1e-5f);
  const int64_t h = bench->hidden_size, ff = bench->intermediate_size, v = bench->vocab_size;
  const int64_t params = bench->num_layers * (4 * h * h + 3 * h * ff + 2 * h) + 2 * v * h + h;
  EXPECT_NEAR(params / 1e9, 0.94, 0.005);
  auto bad = PresetConfig("mistral-7b");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "mistral-7b"));
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "bench-0.9b"));
}

TEST(SyntheticModelTest, BadOptionsRefused) {
  SyntheticModelOptions o;
  ScopedTempDir tmp("synth-bad");
  o.out_dir = tmp.path;
  o.write_safetensors = false;
  EXPECT_EQ(WriteSyntheticModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.write_safetensors = true;
  o.num_layers = 0;
  EXPECT_EQ(WriteSyntheticModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.num_layers = -1;
  o.preset = "gpt2";
  EXPECT_EQ(WriteSyntheticModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.preset = "tiny";
  o.max_shard_bytes = 0;
  EXPECT_EQ(WriteSyntheticModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.out_dir = "";
  o.max_shard_bytes = 1 << 20;
  EXPECT_EQ(WriteSyntheticModel(o).code(), absl::StatusCode::kInvalidArgument);
}

// Both layouts, sharded, re-opened: same tensors, bit for bit, shapes from config.json.
TEST(SyntheticModelTest, RoundTripBothLayoutsSharded) {
  SyntheticModelOptions o;
  o.preset = "tiny";
  o.num_layers = 2;
  o.vocab_size = 300;
  o.seed = 7;
  o.max_shard_bytes = 600 << 10;  // forces several shards
  o.write_safetensors = true;
  o.write_pytorch = true;
  ScopedTempDir tmp_both("synth-both");
  o.out_dir = tmp_both.path;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  SyntheticModelOptions pt_only = o;
  pt_only.write_safetensors = false;
  ScopedTempDir tmp_pt("synth-pt");
  pt_only.out_dir = tmp_pt.path;
  ASSERT_TRUE(WriteSyntheticModel(pt_only).ok());

  EXPECT_TRUE(Exists(o.out_dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(Exists(o.out_dir + "/pytorch_model.bin.index.json"));
  for (const char* index : {"/model.safetensors.index.json", "/pytorch_model.bin.index.json"}) {
    auto j = nlohmann::json::parse(testing::ReadFileOrDie(o.out_dir + index));
    std::set<std::string> shards;
    for (const auto& [name, shard] : j["weight_map"].items()) shards.insert(shard.get<std::string>());
    EXPECT_GE(shards.size(), 3u) << index;
    for (const auto& shard : shards) {
      EXPECT_TRUE(Exists(o.out_dir + "/" + shard)) << shard;
      struct stat st;
      ASSERT_EQ(::stat((o.out_dir + "/" + shard).c_str(), &st), 0);
      // Every tensor here is < 600 KB, so no shard needs to exceed the limit (plus headers).
      EXPECT_LT(st.st_size, (600 << 10) + (64 << 10)) << shard;
    }
  }
  EXPECT_TRUE(Exists(o.out_dir + "/generation_config.json"));

  auto cfg = LoadModelConfig(o.out_dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->num_layers, 2);
  EXPECT_EQ(cfg->vocab_size, 300);
  EXPECT_EQ(cfg->hidden_size, 256);
  EXPECT_EQ(cfg->num_kv_heads, 4);
  EXPECT_EQ(cfg->torch_dtype, DType::kBF16);
  EXPECT_EQ(cfg->bos_token_id, 1);
  EXPECT_EQ(cfg->eos_token_id, 2);

  auto st = Checkpoint::Open(o.out_dir);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ((*st)->format(), "safetensors");
  auto pt = Checkpoint::Open(pt_only.out_dir);
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ((*pt)->format(), "pytorch");

  const int64_t h = 256, q = cfg->q_size(), kv = cfg->kv_size(), inter = 688;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"model.embed_tokens.weight", {300, h}}, {"model.norm.weight", {h}}, {"lm_head.weight", {300, h}}};
  for (int l = 0; l < 2; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    expected.push_back({p + "input_layernorm.weight", {h}});
    expected.push_back({p + "post_attention_layernorm.weight", {h}});
    expected.push_back({p + "self_attn.q_proj.weight", {q, h}});
    expected.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    expected.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    expected.push_back({p + "self_attn.o_proj.weight", {h, q}});
    expected.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    expected.push_back({p + "mlp.up_proj.weight", {inter, h}});
    expected.push_back({p + "mlp.down_proj.weight", {h, inter}});
  }
  EXPECT_EQ((*st)->TensorNames().size(), expected.size());
  EXPECT_EQ((*pt)->TensorNames().size(), expected.size() + 2);  // + inv_freq per layer
  for (const auto& [name, shape] : expected) {
    auto a = (*st)->Get(name);
    auto b = (*pt)->Get(name);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*a)->shape, shape) << name;
    EXPECT_EQ((*b)->shape, shape) << name;
    EXPECT_EQ((*a)->dtype, DType::kBF16) << name;
    EXPECT_EQ((*b)->dtype, DType::kBF16) << name;
    std::vector<uint16_t> va(Numel(shape)), vb(Numel(shape));
    ASSERT_TRUE((*st)->ReadSlice(name, shape, 0, 0, shape[0], DType::kBF16, va.data()).ok());
    ASSERT_TRUE((*pt)->ReadSlice(name, shape, 0, 0, shape[0], DType::kBF16, vb.data()).ok());
    EXPECT_EQ(va, vb) << name;
  }
  for (int l = 0; l < 2; ++l) {
    std::string name = "model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq";
    auto t = (*pt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->dtype, DType::kF32);
    std::vector<float> v = ReadAll(**pt, name);
    ASSERT_EQ(v.size(), 16u);
    for (int i = 0; i < 16; ++i) EXPECT_NEAR(v[i], 1.0 / std::pow(1e4, 2.0 * i / 32), 1e-6);
  }
}

// Mean and standard deviation of every tensor match the documented initialisation.
TEST(SyntheticModelTest, WeightStatisticsKeepActivationsSane) {
  SyntheticModelOptions o;
  o.num_layers = 3;
  o.dtype = DType::kF32;
  o.seed = 3;
  ScopedTempDir tmp("synth-stats");
  o.out_dir = tmp.path;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  auto ck = Checkpoint::Open(o.out_dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto check = [&](const std::string& name, double mean, double std) {
    std::vector<float> v = ReadAll(**ck, name);
    double s = 0, s2 = 0, mx = 0;
    for (float x : v) {
      s += x;
      mx = std::max(mx, std::fabs(double(x) - mean));
    }
    double m = s / v.size();
    for (float x : v) s2 += (x - m) * (x - m);
    double sd = std::sqrt(s2 / v.size());
    EXPECT_NEAR(m, mean, 4 * std / std::sqrt(double(v.size())) + 1e-7) << name;
    // Sample-sd error is ~1/sqrt(2n): loose for the 256-element norms, tight for the matrices.
    EXPECT_NEAR(sd, std, std::max(0.03, 4.0 / std::sqrt(2.0 * v.size())) * std) << name;
    EXPECT_LT(mx, 6 * std) << name;  // bounded: no outliers that could blow up activations
  };
  const double res = 1.0 / std::sqrt(2.0 * 3);
  check("model.embed_tokens.weight", 0, 0.02);
  check("lm_head.weight", 0, 1 / std::sqrt(256.0));
  check("model.norm.weight", 1, 0.02);
  for (int l = 0; l < 3; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    check(p + "self_attn.q_proj.weight", 0, 1 / std::sqrt(256.0));
    check(p + "self_attn.k_proj.weight", 0, 1 / std::sqrt(256.0));
    check(p + "self_attn.o_proj.weight", 0, res / std::sqrt(256.0));
    check(p + "mlp.up_proj.weight", 0, 1 / std::sqrt(256.0));
    check(p + "mlp.down_proj.weight", 0, res / std::sqrt(688.0));
    check(p + "input_layernorm.weight", 1, 0.02);
  }
  // Different tensors are not copies of each other.
  EXPECT_NE(ReadAll(**ck, "model.layers.0.mlp.up_proj.weight"), ReadAll(**ck, "model.layers.0.mlp.gate_proj.weight"));
}

TEST(SyntheticModelTest, DeterministicPerSeedAndIndependentOfLayerCount) {
  auto write = [](uint64_t seed, int layers, DType dtype) {
    SyntheticModelOptions o;
    o.num_layers = layers;
    o.seed = seed;
    o.dtype = dtype;
    ScopedTempDir tmp("synth-seed");  // the mapping outlives the unlinked files
    o.out_dir = tmp.path;
    EXPECT_TRUE(WriteSyntheticModel(o).ok());
    auto ck = Checkpoint::Open(o.out_dir);
    EXPECT_TRUE(ck.ok()) << ck.status();
    return std::move(*ck);
  };
  auto a = write(11, 1, DType::kF32);
  auto b = write(11, 2, DType::kF32);
  auto c = write(12, 1, DType::kF32);
  auto h = write(11, 1, DType::kF16);
  const std::string w = "model.layers.0.self_attn.v_proj.weight";
  std::vector<float> va = ReadAll(*a, w), vb = ReadAll(*b, w), vc = ReadAll(*c, w);
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  // The f16 model holds the same values rounded to half.
  auto t = h->Get(w);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->dtype, DType::kF16);
  std::vector<uint16_t> vh(va.size());
  ASSERT_TRUE(h->ReadSlice(w, (*t)->shape, 0, 0, (*t)->shape[0], DType::kF16, vh.data()).ok());
  for (size_t i = 0; i < va.size(); ++i) ASSERT_EQ(vh[i], F32ToF16(va[i]));
}

// Rewriting a directory sharded after a single-file run must not leave model.safetensors behind to
// shadow the new shards (Open prefers the single file).
TEST(SyntheticModelTest, RewriteRemovesStaleLayoutFiles) {
  ScopedTempDir tmp("synth-rewrite");
  SyntheticModelOptions o;
  o.num_layers = 1;
  o.out_dir = tmp.path;
  o.seed = 1;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  EXPECT_TRUE(Exists(tmp.path + "/model.safetensors"));
  o.seed = 2;
  o.max_shard_bytes = 300 << 10;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  EXPECT_FALSE(Exists(tmp.path + "/model.safetensors"));
  EXPECT_TRUE(Exists(tmp.path + "/model.safetensors.index.json"));
  o.max_shard_bytes = int64_t{1} << 30;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  EXPECT_FALSE(Exists(tmp.path + "/model.safetensors.index.json"));
  for (const auto& e : std::filesystem::directory_iterator(tmp.path)) {
    EXPECT_EQ(e.path().filename().string().find("-of-"), std::string::npos) << e.path();
  }
  auto ck = Checkpoint::Open(tmp.path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(Exists(tmp.path + "/config.json"));
}

}  // namespace
}  // namespace tpserve::model
