// Tensor parallelism in-process: ranks as threads, Gloo over 127.0.0.1, an in-memory store. TP=2 and TP=4
// must give the reference greedy ids, logits equal to TP=1 within 1e-5 relative, identical logits on every
// rank, and per-rank weight bytes of total / N plus the replicated norms. Random-weight models cover KV head
// replication (tp > num_kv_heads), padded vocab and tied embeddings.
#include <cmath>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"
#include "worker/model/llama_model.h"
#include "tools/model/synthetic_model.h"

namespace tpserve::model {
namespace {

using testing::BackendKind;
using testing::DecodeOptions;
using testing::DecodeResult;

// Where rank weights come from: a checkpoint directory, or random weights for `config`.
struct Source {
  std::string dir;
  ModelConfig config;
  RandomWeightOptions random;
  LlamaModelOptions options;  // e.g. quantization; logits_on_every_rank is set by RunTp
};

struct RankRun {
  DecodeResult decode;
  size_t weight_bytes = 0;
  double allreduce_seconds = 0;
};

// Runs GreedyDecode on `world` ranks concurrently; returns each rank's result.
std::vector<RankRun> RunTp(int world, BackendKind kind, const Source& src,
                           const std::vector<std::vector<int32_t>>& prompts, const DecodeOptions& o) {
  static int generation = 0;
  const std::string prefix = absl::StrCat("tp-test-", generation++, "/");
  comm::MemoryStore store;
  std::vector<RankRun> runs(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      RankRun& run = runs[r];
      auto fail = [&](const absl::Status& s) { run.decode.status = s; };
      std::unique_ptr<kernels::Backend> backend = testing::MakeBackend(kind);
      std::unique_ptr<comm::Communicator> comm;
      if (world == 1) {
        comm = comm::CreateLocalCommunicator();
      } else {
        comm::GlooOptions go;
        go.rank = r;
        go.world_size = world;
        go.host = "127.0.0.1";
        go.prefix = prefix;
        go.timeout = absl::Seconds(60);
        absl::StatusOr<std::unique_ptr<comm::Communicator>> c = comm::CreateGlooCommunicator(go, store);
        if (!c.ok()) return fail(c.status());
        comm = std::move(*c);
      }
      ModelConfig config = src.config;
      if (!src.dir.empty()) {
        absl::StatusOr<ModelConfig> cfg = LoadModelConfig(src.dir);
        if (!cfg.ok()) return fail(cfg.status());
        config = *cfg;
      }
      absl::StatusOr<ShardSpec> spec = ShardSpec::Create(config, r, world);
      if (!spec.ok()) return fail(spec.status());
      LlamaModelOptions mo = src.options;
      mo.logits_on_every_rank = true;  // every rank takes the argmax itself (the coordinator's job otherwise)
      absl::StatusOr<std::unique_ptr<LlamaModel>> model;
      if (!src.dir.empty()) {
        absl::StatusOr<std::unique_ptr<checkpoint::Checkpoint>> ckpt = checkpoint::Checkpoint::Open(src.dir);
        if (!ckpt.ok()) return fail(ckpt.status());
        model = LlamaModel::Load(**ckpt, *spec, backend.get(), comm.get(), mo);
      } else {
        model = LlamaModel::CreateRandom(*spec, backend.get(), comm.get(), src.random, mo);
      }
      if (!model.ok()) return fail(model.status());
      run.weight_bytes = (*model)->weight_bytes();
      run.decode = testing::GreedyDecode(**model, prompts, o);
      run.allreduce_seconds = (*model)->total_allreduce_seconds();
    });
  }
  for (auto& t : threads) t.join();
  return runs;
}

// |tp - tp1| <= 1e-5 * scale, relative to the logit vector's scale max(max_i |tp1_i|, 1): a logit near zero
// carries the absolute error of the dot products that made its larger neighbours.
void ExpectLogitsClose(const DecodeResult& tp, const DecodeResult& tp1, const std::string& what,
                       double tolerance = 1e-5) {
  ASSERT_EQ(tp.logits.size(), tp1.logits.size()) << what;
  double worst = 0;
  for (size_t e = 0; e < tp1.logits.size(); ++e) {
    ASSERT_EQ(tp.logits[e].size(), tp1.logits[e].size());
    double scale = 1.0;
    for (float x : tp1.logits[e]) scale = std::max(scale, std::fabs(static_cast<double>(x)));
    for (size_t i = 0; i < tp1.logits[e].size(); ++i) {
      const double ref = tp1.logits[e][i];
      const double err = std::fabs(tp.logits[e][i] - ref) / scale;
      worst = std::max(worst, err);
      ASSERT_LE(err, tolerance) << what << ": event " << e << " id " << i << " tp " << tp.logits[e][i] << " tp1 " << ref;
    }
  }
  ::testing::Test::RecordProperty(what + "_max_rel_err", std::to_string(worst));
}

struct TpCase {
  int world;
  BackendKind backend;
};

void PrintTo(const TpCase& c, std::ostream* os) {
  *os << "tp " << c.world << (c.backend == BackendKind::kCpu ? " cpu" : " reference");
}

class LlamaTpTest : public ::testing::TestWithParam<TpCase> {};

TEST_P(LlamaTpTest, Stories260KMatchesReferenceIdsAndTp1Logits) {
  const TpCase& c = GetParam();
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  const std::vector<testing::RefCase> cases = testing::LoadRefCases(ref);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& rc : cases) prompts.push_back(rc.prompt);
  DecodeOptions o;
  o.chunk = 3;
  o.block_size = 4;
  o.num_blocks = 2 * 512 / 4 + 8;
  o.num_new = 64;
  Source src;
  src.dir = dir;
  std::vector<RankRun> tp1 = RunTp(1, c.backend, src, prompts, o);
  ASSERT_TRUE(tp1[0].decode.status.ok()) << tp1[0].decode.status;
  std::vector<RankRun> tp = RunTp(c.world, c.backend, src, prompts, o);
  for (int r = 0; r < c.world; ++r) ASSERT_TRUE(tp[r].decode.status.ok()) << "rank " << r << ": " << tp[r].decode.status;

  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> want(cases[i].generated.begin(), cases[i].generated.begin() + o.num_new);
    EXPECT_EQ(tp[0].decode.generated[i], want) << "case " << i;
  }
  ExpectLogitsClose(tp[0].decode, tp1[0].decode, absl::StrCat("tp", c.world));
  // The all-gather hands every rank the same bits.
  for (int r = 1; r < c.world; ++r) EXPECT_EQ(tp[r].decode.logits, tp[0].decode.logits) << "rank " << r;
  EXPECT_GT(tp[0].allreduce_seconds, 0.0);
  // Norms (2 per layer + final, hidden 64, float32) are replicated; the rest splits evenly.
  const size_t total = tp1[0].weight_bytes;
  const size_t replicated = (2 * 5 + 1) * 64 * sizeof(float);
  for (int r = 0; r < c.world; ++r) EXPECT_EQ(tp[r].weight_bytes, (total - replicated) / c.world + replicated);
}

INSTANTIATE_TEST_SUITE_P(Worlds, LlamaTpTest,
                         ::testing::Values(TpCase{2, BackendKind::kReference}, TpCase{2, BackendKind::kCpu},
                                           TpCase{4, BackendKind::kCpu}, TpCase{4, BackendKind::kReference}),
                         [](const ::testing::TestParamInfo<TpCase>& info) {
                           return absl::StrCat("Tp", info.param.world,
                                               info.param.backend == BackendKind::kCpu ? "Cpu" : "Reference");
                         });

// 8 q heads over 2 KV heads with a vocab that does not divide by tp.
ModelConfig SmallGqaConfig() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 501;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5f;
  return c;
}

TEST(LlamaTpRandomTest, KvReplicationPaddedVocabAndTiedEmbeddingsMatchTp1) {
  for (bool tied : {false, true}) {
    Source src;
    src.config = SmallGqaConfig();
    src.config.tie_word_embeddings = tied;
    src.random.seed = 99;
    src.random.dtype = DType::kF32;
    DecodeOptions o;
    o.chunk = 5;
    o.block_size = 4;
    o.num_blocks = 64;
    o.num_new = 12;
    const std::vector<std::vector<int32_t>> prompts = {{1, 17, 250, 499, 500, 3, 42}, {1, 260, 7}};
    std::vector<RankRun> tp1 = RunTp(1, BackendKind::kCpu, src, prompts, o);
    ASSERT_TRUE(tp1[0].decode.status.ok()) << tp1[0].decode.status;
    for (int world : {2, 4}) {  // 4 > 2 KV heads: each KV head lives on two ranks
      std::vector<RankRun> tp = RunTp(world, BackendKind::kCpu, src, prompts, o);
      for (int r = 0; r < world; ++r) ASSERT_TRUE(tp[r].decode.status.ok()) << tp[r].decode.status;
      const std::string what = absl::StrCat("random_tp", world, tied ? "_tied" : "");
      ExpectLogitsClose(tp[0].decode, tp1[0].decode, what);
      EXPECT_EQ(tp[0].decode.generated, tp1[0].decode.generated) << what;
      // Padded logits never surface: exactly vocab_size of them per event.
      EXPECT_EQ(tp[0].decode.logits[0].size(), 501u);

      // Independent byte count: float32 matrices here, norms float32.
      const ModelConfig& c = src.config;
      const int64_t h = c.hidden_size, hd = c.head_dim;
      const int64_t local_vocab = (c.vocab_size + world - 1) / world;
      const int64_t local_kv_heads = std::max<int64_t>(1, c.num_kv_heads / world);
      const int64_t per_layer = (c.num_heads / world + 2 * local_kv_heads) * hd * h  // qkv
                                + h * (c.num_heads / world) * hd                   // o_proj
                                + 3 * (c.intermediate_size / world) * h            // gate, up, down
                                + 2 * h;                                           // norms
      const int64_t elems = per_layer * c.num_layers + h + local_vocab * h * (tied ? 1 : 2);
      for (int r = 0; r < world; ++r) EXPECT_EQ(tp[r].weight_bytes, static_cast<size_t>(elems) * 4) << what;
    }
  }
}

// A communicator that only carries a rank: loading never runs a collective, so each rank of a TP group can
// be loaded on its own, one after another (peak memory is one rank's slice, not the model).
class RankOnlyCommunicator : public comm::Communicator {
 public:
  RankOnlyCommunicator(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string name() const override { return "rank-only"; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::UnimplementedError("rank-only"); }
  absl::Status AllGather(const float*, size_t, float*) override { return absl::UnimplementedError("rank-only"); }

 private:
  int rank_, world_;
};

// Issue 3: on a 13B-shaped checkpoint shortened to 2 layers (hidden 5120, 40 heads, MLP 13824, vocab
// 32000, bf16), each TP=2 worker's loaded weight bytes are (total - replicated) / 2 + replicated, where
// total and replicated (the norms) are summed from the checkpoint's own tensor table, not from the loader.
// The loader keeps norm vectors in float32 (a few KB; RMSNorm reads them in float32 anyway), so the
// replicated part is counted at 4 bytes an element.
TEST(LlamaTpMemoryTest, ThirteenBShapedTwoLayersLoadsOneHalfPerRankPlusNorms) {
  const tpserve::testing::ScopedTempDir tmp("tp-13b-2l");
  const std::string& dir = tmp.path;
  SyntheticModelOptions o;
  o.out_dir = dir;
  o.preset = "llama-2-13b";
  o.num_layers = 2;
  o.dtype = DType::kBF16;
  o.seed = 5;
  ASSERT_TRUE(WriteSyntheticModel(o).ok());
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<checkpoint::Checkpoint>> ck = checkpoint::Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();

  int64_t total = 0, replicated = 0;
  for (const std::string& name : (*ck)->TensorNames()) {
    if (absl::StrContains(name, "rotary_emb")) continue;  // float32 buffers the loader ignores
    auto t = (*ck)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    int64_t n = 1;
    for (int64_t d : (*t)->shape) n *= d;
    const int64_t bytes = n * static_cast<int64_t>(DTypeSize((*t)->dtype));
    total += bytes;
    if (absl::EndsWith(name, "norm.weight")) replicated += n;
  }
  // 2 x (4 x 5120^2 attention + 3 x 13824 x 5120 MLP) + 2 x 32000 x 5120 embed/lm_head, bf16.
  EXPECT_EQ(total, (2 * (4 * 5120LL * 5120 + 3 * 13824LL * 5120) + 2 * 32000LL * 5120 + 5 * 5120LL) * 2);
  EXPECT_EQ(replicated, 5 * 5120LL);  // elements: 2 norms per layer + the final norm

  const int world = 2;
  for (int r = 0; r < world; ++r) {
    absl::StatusOr<ShardSpec> spec = ShardSpec::Create(*config, r, world);
    ASSERT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<std::unique_ptr<kernels::Backend>> backend = kernels::CreateCpuBackend({1, kernels::CpuIsa::kAuto});
    ASSERT_TRUE(backend.ok()) << backend.status();
    RankOnlyCommunicator comm(r, world);
    absl::StatusOr<std::unique_ptr<LlamaModel>> m =
        LlamaModel::Load(**ck, *spec, backend->get(), &comm, LlamaModelOptions{});
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(static_cast<int64_t>((*m)->weight_bytes()), (total - 2 * replicated) / world + 4 * replicated)
        << "rank " << r;
  }
}

TEST(LlamaTpRandomTest, MismatchedCommunicatorIsRefused) {
  ModelConfig c = SmallGqaConfig();
  absl::StatusOr<ShardSpec> spec = ShardSpec::Create(c, 1, 2);
  ASSERT_TRUE(spec.ok());
  std::unique_ptr<kernels::Backend> backend = kernels::CreateReferenceBackend();
  std::unique_ptr<comm::Communicator> local = comm::CreateLocalCommunicator();
  absl::StatusOr<std::unique_ptr<LlamaModel>> m =
      LlamaModel::CreateRandom(*spec, backend.get(), local.get(), RandomWeightOptions{}, LlamaModelOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
}

// --quantization int8 keeps the split exact: every rank quantizes its slice with the whole row's scale
// (worker/model/quantization.h), so TP=2 holds the same int8 weights as TP=1 and only the float order of
// the all-reduce differs, as for float weights. Greedy ids over 160 tokens must be equal. Logits within
// 1e-2 of the scale, not 1e-5: the avx512_bf16 int8 kernel rounds activations to bf16, where an all-reduce's
// last-bit difference can flip a rounding (2^-8 relative on that element) and the KV cache carries it on
// (measured worst 2.7e-3 over 160 steps; a wrong scale split is O(1)).
TEST(LlamaTpInt8Test, Stories260KTp2EqualsTp1) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& rc : testing::LoadRefCases(ref)) prompts.push_back(rc.prompt);
  DecodeOptions o;
  o.chunk = 5;
  o.block_size = 16;
  o.num_blocks = 2 * 512 / 16 * static_cast<int>(prompts.size());
  o.num_new = 160;
  Source src;
  src.dir = dir;
  src.options.quantization = WeightQuantization::kInt8;
  src.options.quantize_lm_head = true;
  std::vector<RankRun> tp1 = RunTp(1, BackendKind::kCpu, src, prompts, o);
  ASSERT_TRUE(tp1[0].decode.status.ok()) << tp1[0].decode.status;
  std::vector<RankRun> tp2 = RunTp(2, BackendKind::kCpu, src, prompts, o);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(tp2[r].decode.status.ok()) << "rank " << r << ": " << tp2[r].decode.status;
    EXPECT_EQ(tp2[r].decode.generated, tp1[0].decode.generated) << "rank " << r;
    // Per rank: about half the int8 projections plus the replicated norms.
    EXPECT_LT(tp2[r].weight_bytes, tp1[0].weight_bytes * 3 / 4);
  }
  ExpectLogitsClose(tp2[0].decode, tp1[0].decode, "int8_tp2_vs_tp1", 1e-2);
}

}  // namespace
}  // namespace tpserve::model
