// config.json parsing: the Tulu/Llama-2 13B config, the shared stories config, refusals that name the
// offending field, head_dim present/absent, eos as a list, and the writer round trip.
#include "common/model_config.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"

namespace tpserve {
namespace {

// Tulu V2.5 DPO 13B's config.json (Llama-2-13B architecture, 8192 context).
const char kTulu13B[] = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 13824,
  "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 40,
  "num_hidden_layers": 40, "num_key_value_heads": 40, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.38.2", "use_cache": false, "vocab_size": 32000})";

void ExpectInvalid(const std::string& json, const std::string& needle) {
  auto c = ParseModelConfig(json);
  ASSERT_FALSE(c.ok()) << json;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(c.status().message(), needle)) << c.status() << "\nmissing: " << needle;
}

TEST(ModelConfigTest, ParsesTulu13B) {
  auto c = ParseModelConfig(kTulu13B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 5120);
  EXPECT_EQ(c->intermediate_size, 13824);
  EXPECT_EQ(c->num_layers, 40);
  EXPECT_EQ(c->num_heads, 40);
  EXPECT_EQ(c->num_kv_heads, 40);
  EXPECT_EQ(c->head_dim, 128);  // absent: hidden / heads
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->rope_theta, 1e4f);
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->q_size(), 5120);
  EXPECT_EQ(c->kv_size(), 5120);
}

TEST(ModelConfigTest, SharedStoriesConfigWithGqaAndHeadDim) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  auto c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->num_layers, 5);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_EQ(c->kv_size(), 32);
}

TEST(ModelConfigTest, MistralRefusedByName) {
  std::string j = absl::StrReplaceAll(kTulu13B, {{"\"model_type\": \"llama\"", "\"model_type\": \"mistral\""}});
  ExpectInvalid(j, "mistral");
}

TEST(ModelConfigTest, OtherArchitectureRefused) {
  std::string j = absl::StrReplaceAll(kTulu13B, {{"LlamaForCausalLM", "MistralForCausalLM"}});
  ExpectInvalid(j, "MistralForCausalLM");
}

TEST(ModelConfigTest, MissingFieldsAreNamed) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "vocab_size"}) {
    std::string j = absl::StrReplaceAll(kTulu13B, {{std::string("\"") + field + "\"", "\"unused_field\""}});
    ExpectInvalid(j, field);
  }
}

TEST(ModelConfigTest, BadValuesAreNamed) {
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"hidden_size\": 5120", "\"hidden_size\": \"big\""}}), "hidden_size");
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"hidden_size\": 5120", "\"hidden_size\": 5121"}}), "hidden_size");
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"num_key_value_heads\": 40", "\"num_key_value_heads\": 7"}}),
                "num_key_value_heads");
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\"}"}}),
                "rope_scaling");
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"bfloat16\"", "\"int8\""}}), "torch_dtype");
  ExpectInvalid("{not json", "JSON");
}

TEST(ModelConfigTest, HeadDimPresentWins) {
  // hidden / heads would be 128; an explicit head_dim (as in newer configs) overrides it.
  std::string j = absl::StrReplaceAll(kTulu13B, {{"\"hidden_act\"", "\"head_dim\": 64, \"hidden_act\""}});
  auto c = ParseModelConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->q_size(), 40 * 64);
  ExpectInvalid(absl::StrReplaceAll(kTulu13B, {{"\"hidden_act\"", "\"head_dim\": 63, \"hidden_act\""}}), "head_dim");
}

TEST(ModelConfigTest, KvHeadsDefaultToHeads) {
  std::string j = absl::StrReplaceAll(kTulu13B, {{"\"num_key_value_heads\": 40,", ""}});
  auto c = ParseModelConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 40);
}

TEST(ModelConfigTest, EosAsList) {
  std::string j = absl::StrReplaceAll(kTulu13B, {{"\"eos_token_id\": 2", "\"eos_token_id\": [2, 32000]"}});
  auto c = ParseModelConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_id, 2);
}

TEST(ModelConfigTest, WriterRoundTrips) {
  auto c = ParseModelConfig(kTulu13B);
  ASSERT_TRUE(c.ok());
  auto back = ParseModelConfig(ModelConfigToJson(*c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->hidden_size, c->hidden_size);
  EXPECT_EQ(back->num_layers, c->num_layers);
  EXPECT_EQ(back->num_kv_heads, c->num_kv_heads);
  EXPECT_EQ(back->head_dim, c->head_dim);
  EXPECT_EQ(back->vocab_size, c->vocab_size);
  EXPECT_EQ(back->max_position_embeddings, c->max_position_embeddings);
  EXPECT_FLOAT_EQ(back->rms_norm_eps, c->rms_norm_eps);
  EXPECT_EQ(back->torch_dtype, c->torch_dtype);
  EXPECT_EQ(back->eos_token_id, 2);
}

}  // namespace
}  // namespace tpserve
