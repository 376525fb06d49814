// Shard spec: per-rank sizes add up to the model, slices tile each tensor, bad splits are refused with
// messages naming the dimension, KV heads replicate the vLLM way when tp > num_kv_heads.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/model_config.h"
#include "gtest/gtest.h"
#include "worker/model/shard_spec.h"

namespace tpserve::model {
namespace {

// Llama-2-13B shapes with only 2 layers.
ModelConfig Llama13BShape(int vocab = 32000) {
  ModelConfig c;
  c.hidden_size = 5120;
  c.intermediate_size = 13824;
  c.num_layers = 2;
  c.num_heads = 40;
  c.num_kv_heads = 40;
  c.head_dim = 128;
  c.vocab_size = vocab;
  c.max_position_embeddings = 4096;
  return c;
}

ModelConfig Stories260K() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 172;
  c.num_layers = 5;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 512;
  return c;
}

TEST(ShardSpecTest, PerRankElementsAreTotalOverNPlusReplicated) {
  const ModelConfig c = Llama13BShape();
  // Independent count of the replicated part: 2 norms per layer + the final norm.
  const int64_t replicated = (2 * c.num_layers + 1) * int64_t{c.hidden_size};
  const int64_t total = ShardSpec::TotalElements(c);
  // Hand count of Llama-2-13B with 2 layers: embed + lm_head + per layer (4 attn + 3 mlp + 2 norms) + norm.
  const int64_t h = 5120, inter = 13824;
  EXPECT_EQ(total, 2 * 32000 * h + 2 * (4 * h * h + 3 * h * inter + 2 * h) + h);
  for (int tp : {1, 2, 4, 8}) {
    for (int rank = 0; rank < tp; ++rank) {
      absl::StatusOr<ShardSpec> spec = ShardSpec::Create(c, rank, tp);
      ASSERT_TRUE(spec.ok()) << spec.status();
      EXPECT_EQ(spec->ReplicatedElements(), replicated);
      EXPECT_EQ(spec->LocalElements(), (total - replicated) / tp + replicated) << "tp " << tp << " rank " << rank;
      // bf16 bytes: half of the f32 ones; what weight_bytes() reports for this spec.
      EXPECT_EQ(spec->LocalElements() * 2, ((total - replicated) / tp + replicated) * 2);
    }
  }
}

TEST(ShardSpecTest, SlicesTileEveryTensorExactlyOnce) {
  for (const ModelConfig& c : {Llama13BShape(), Llama13BShape(32001), Stories260K()}) {
    for (int tp : {1, 2, 4}) {
      // name -> covered ranges along the split dim
      std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> ranges;
      std::map<std::string, WeightSlice> any;
      for (int rank = 0; rank < tp; ++rank) {
        absl::StatusOr<ShardSpec> spec = ShardSpec::Create(c, rank, tp);
        ASSERT_TRUE(spec.ok()) << spec.status();
        for (const WeightSlice& w : spec->weights()) {
          ranges[w.name].push_back({w.begin, w.end});
          any[w.name] = w;
          const LocalBuffer& b = spec->buffers()[w.buffer];
          EXPECT_LE(w.row_offset + w.local_rows(), b.rows) << w.name;
          EXPECT_EQ(w.local_cols(), b.cols) << w.name;
        }
      }
      EXPECT_EQ(ranges.size(), 2u + 9u * c.num_layers + 1u);
      for (auto& [name, rs] : ranges) {
        const WeightSlice& w = any[name];
        const int64_t full = w.full_shape[w.dim];
        if (w.split == SplitKind::kReplicated) {
          for (auto [b, e] : rs) EXPECT_TRUE(b == 0 && e == full) << name;
          continue;
        }
        std::sort(rs.begin(), rs.end());
        int64_t next = 0;
        for (auto [b, e] : rs) {
          EXPECT_EQ(b, next) << name << " tp " << tp;
          next = e;
        }
        EXPECT_EQ(next, full) << name << " tp " << tp;
      }
    }
  }
}

TEST(ShardSpecTest, FusedBuffersStackQkvAndGateUp) {
  absl::StatusOr<ShardSpec> spec = ShardSpec::Create(Stories260K(), 1, 2);
  ASSERT_TRUE(spec.ok()) << spec.status();
  // 8 heads / 2 = 4 q heads, 4 kv heads / 2 = 2 kv heads, head_dim 8.
  EXPECT_EQ(spec->local_heads(), 4);
  EXPECT_EQ(spec->local_kv_heads(), 2);
  const LocalBuffer& qkv = spec->buffers()[spec->BufferIndex(LocalWeight::kQkv, 3)];
  EXPECT_EQ(qkv.rows, 4 * 8 + 2 * 2 * 8);
  EXPECT_EQ(qkv.cols, 64);
  std::map<std::string, WeightSlice> by_name;
  for (const WeightSlice& w : spec->weights()) by_name[w.name] = w;
  const WeightSlice& q = by_name["model.layers.3.self_attn.q_proj.weight"];
  const WeightSlice& k = by_name["model.layers.3.self_attn.k_proj.weight"];
  const WeightSlice& v = by_name["model.layers.3.self_attn.v_proj.weight"];
  EXPECT_EQ(q.begin, 32);  // heads 4..7
  EXPECT_EQ(q.end, 64);
  EXPECT_EQ(k.begin, 16);  // kv heads 2..3
  EXPECT_EQ(k.end, 32);
  EXPECT_EQ(q.row_offset, 0);
  EXPECT_EQ(k.row_offset, 32);
  EXPECT_EQ(v.row_offset, 48);
  const WeightSlice& o = by_name["model.layers.3.self_attn.o_proj.weight"];
  EXPECT_EQ(o.split, SplitKind::kRow);
  EXPECT_EQ(o.dim, 1);
  EXPECT_EQ(o.begin, 32);
  const WeightSlice& up = by_name["model.layers.0.mlp.up_proj.weight"];
  EXPECT_EQ(up.begin, 86);
  EXPECT_EQ(up.end, 172);
  EXPECT_EQ(up.row_offset, 86);
  EXPECT_EQ(spec->buffers()[up.buffer].rows, 172);
  EXPECT_EQ(spec->activation("o_proj").state, ActivationState::kPartial);
  EXPECT_EQ(spec->activation("down").state, ActivationState::kPartial);
  EXPECT_EQ(spec->activation("residual").state, ActivationState::kMirrored);
}

TEST(ShardSpecTest, RefusesBadSplitsNamingTheDimension) {
  absl::StatusOr<ShardSpec> s = ShardSpec::Create(Stories260K(), 0, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.status().message(), "num_attention_heads 8 is not divisible by --tp 3"))
      << s.status();

  ModelConfig c = Stories260K();
  c.intermediate_size = 170;  // 170 % 4 != 0
  s = ShardSpec::Create(c, 0, 4);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), "intermediate_size 170 is not divisible by --tp 4"))
      << s.status();

  c = Stories260K();
  c.num_heads = 12;
  c.num_kv_heads = 6;
  c.intermediate_size = 176;
  s = ShardSpec::Create(c, 0, 4);  // 4 <= 6 kv heads but 6 % 4 != 0
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), "num_key_value_heads 6 is not divisible by --tp 4"))
      << s.status();

  c = Stories260K();
  c.num_heads = 12;
  c.num_kv_heads = 4;
  c.intermediate_size = 180;
  s = ShardSpec::Create(c, 0, 6);  // 6 > 4 kv heads and not a multiple
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), "num_key_value_heads 4")) << s.status();

  s = ShardSpec::Create(Stories260K(), 2, 2);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), "rank 2")) << s.status();
}

TEST(ShardSpecTest, ReplicatesKvHeadsWhenTpExceedsThem) {
  ModelConfig c = Stories260K();  // 8 q heads, 4 kv heads: groups of 2
  c.intermediate_size = 176;
  for (int tp : {8}) {
    for (int rank = 0; rank < tp; ++rank) {
      absl::StatusOr<ShardSpec> spec = ShardSpec::Create(c, rank, tp);
      ASSERT_TRUE(spec.ok()) << spec.status();
      EXPECT_TRUE(spec->kv_replicated());
      EXPECT_EQ(spec->local_heads(), 1);
      EXPECT_EQ(spec->local_kv_heads(), 1);
      // The kv head this rank holds is the one its q head reads in the unsplit model: h / (8 / 4).
      EXPECT_EQ(spec->kv_head_begin(), spec->head_begin() / 2) << "rank " << rank;
      for (const WeightSlice& w : spec->weights()) {
        if (absl::StrContains(w.name, "k_proj")) {
          EXPECT_EQ(w.begin, spec->kv_head_begin() * 8);
          EXPECT_EQ(w.end, w.begin + 8);
        }
      }
    }
  }
  // 2 kv heads, 8 q heads, tp 4: ranks 0,1 hold kv head 0; ranks 2,3 kv head 1.
  c.num_kv_heads = 2;
  std::vector<int> expect = {0, 0, 1, 1};
  for (int rank = 0; rank < 4; ++rank) {
    absl::StatusOr<ShardSpec> spec = ShardSpec::Create(c, rank, 4);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->kv_head_begin(), expect[rank]);
    EXPECT_EQ(spec->head_begin(), 2 * rank);
    EXPECT_EQ(spec->head_begin() / 4, expect[rank]);  // group size 8 / 2
  }
}

TEST(ShardSpecTest, PadsVocabToAMultipleOfTp) {
  const ModelConfig c = Llama13BShape(32001);  // Tulu adds one token
  absl::StatusOr<ShardSpec> r0 = ShardSpec::Create(c, 0, 2);
  absl::StatusOr<ShardSpec> r1 = ShardSpec::Create(c, 1, 2);
  ASSERT_TRUE(r0.ok() && r1.ok());
  EXPECT_EQ(r0->padded_vocab(), 32002);
  EXPECT_EQ(r1->local_vocab(), 16001);
  EXPECT_EQ(r1->vocab_begin(), 16001);
  for (const WeightSlice& w : r1->weights()) {
    if (w.name == "lm_head.weight" || w.name == "model.embed_tokens.weight") {
      EXPECT_EQ(w.begin, 16001);
      EXPECT_EQ(w.end, 32001);  // 16000 real rows, one zero padding row in a 16001-row buffer
      EXPECT_EQ(r1->buffers()[w.buffer].rows, 16001);
    }
  }
  // Tied embeddings: no lm_head buffer.
  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  absl::StatusOr<ShardSpec> t = ShardSpec::Create(tied, 0, 2);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->BufferIndex(LocalWeight::kLmHead), -1);
}

}  // namespace
}  // namespace tpserve::model
