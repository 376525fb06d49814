// stories260K end to end on the GPU: the CUDA backend's greedy ids equal ../shared/reference (llama2.c) from
// safetensors (float32 weights and KV cache: exact) and from the bf16 PyTorch shards. And a 13B-shaped
// model cut to 2 layers: the GPU's logits are finite and match the CPU backend's. Skips without a GPU
// (scripts/gpu-check.sh runs it on one).
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/model_config.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"
#include "tools/model/synthetic_model.h"

namespace tpserve::model {
namespace {

struct GpuCase {
  const char* model;
  const char* reference;
  int chunk;
};

class LlamaCudaTest : public ::testing::TestWithParam<GpuCase> {};

TEST_P(LlamaCudaTest, GreedyIdsMatchTheReferenceOnGpu) {
  if (kernels::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  const GpuCase& c = GetParam();
  TP_REQUIRE_SHARED(dir, std::string("models/") + c.model);
  TP_REQUIRE_SHARED(ref, std::string("reference/") + c.reference);
  auto backend = kernels::CreateCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto comm = comm::CreateLocalCommunicator();
  auto model = testing::LoadWholeCheckpoint(dir, backend->get(), comm.get(), {});
  ASSERT_TRUE(model.ok()) << model.status();
  const auto cases = testing::LoadRefCases(ref);
  std::vector<std::vector<int32_t>> prompts;
  size_t num_new = SIZE_MAX;
  for (const auto& rc : cases) {
    prompts.push_back(rc.prompt);
    num_new = std::min(num_new, rc.generated.size());
  }
  testing::DecodeOptions o;
  o.chunk = c.chunk;
  o.num_new = static_cast<int>(num_new);
  o.num_blocks = 2 * 512 / o.block_size + 8;
  testing::DecodeResult r = testing::GreedyDecode(**model, prompts, o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> want(cases[i].generated.begin(), cases[i].generated.begin() + num_new);
    EXPECT_EQ(r.generated[i], want) << "case " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Stories260K, LlamaCudaTest,
                         ::testing::Values(GpuCase{"stories260K", "stories260K.json", 0},
                                           GpuCase{"stories260K", "stories260K.json", 3},
                                           GpuCase{"stories260K-pt-bf16", "stories260K-bf16.json", 0}));

// Teacher-forced steps of a mixed batch on a 13B-shaped model (hidden 5120, 40 heads, MLP 13824, vocab
// 32000) with 2 layers of random bf16 weights: sequence A prefills 300 tokens in chunks of 128 and then
// decodes, sequence B prefills 37 tokens alongside A's last chunk and decodes with it. Returns every
// sampled logits row in order.
std::vector<std::vector<float>> Run13BSteps(kernels::Backend* backend, absl::Status* status) {
  auto config = PresetConfig("llama-2-13b");
  if (!config.ok()) return *status = config.status(), std::vector<std::vector<float>>{};
  config->num_layers = 2;
  auto spec = ShardSpec::Create(*config, 0, 1);
  if (!spec.ok()) return *status = spec.status(), std::vector<std::vector<float>>{};
  auto comm = comm::CreateLocalCommunicator();
  RandomWeightOptions w;
  w.seed = 13;
  w.dtype = DType::kBF16;
  auto model = LlamaModel::CreateRandom(*spec, backend, comm.get(), w, {});
  if (!model.ok()) return *status = model.status(), std::vector<std::vector<float>>{};
  constexpr int kBlock = 16, kBlocksPerSeq = 24;
  *status = (*model)->AllocateKv(2 * kBlocksPerSeq, kBlock);
  if (!status->ok()) return {};
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(3, config->vocab_size - 1);
  std::vector<int32_t> a(300), b(37);
  for (auto& t : a) t = id(rng);
  for (auto& t : b) t = id(rng);
  std::vector<int32_t> table_a(kBlocksPerSeq), table_b(kBlocksPerSeq);
  for (int i = 0; i < kBlocksPerSeq; ++i) {
    table_a[i] = 2 * kBlocksPerSeq - 1 - 2 * i;  // interleaved, descending: non-contiguous
    table_b[i] = 2 * kBlocksPerSeq - 2 - 2 * i;
  }
  auto seq = [](uint64_t sid, std::vector<int32_t> ids, int start, const std::vector<int32_t>& table, bool sample) {
    SeqInput q;
    q.seq_id = sid;
    q.token_ids = std::move(ids);
    q.start_position = start;
    q.block_table = table;
    q.sample = sample;
    return q;
  };
  std::vector<StepInput> steps(6);
  steps[0].seqs = {seq(1, {a.begin(), a.begin() + 128}, 0, table_a, false)};
  steps[1].seqs = {seq(1, {a.begin() + 128, a.begin() + 256}, 128, table_a, false)};
  steps[2].seqs = {seq(1, {a.begin() + 256, a.end()}, 256, table_a, true), seq(2, b, 0, table_b, true)};
  for (int d = 0; d < 3; ++d) {
    steps[3 + d].seqs = {seq(1, {id(rng)}, 300 + d, table_a, true), seq(2, {id(rng)}, 37 + d, table_b, true)};
  }
  std::vector<std::vector<float>> rows;
  for (const StepInput& in : steps) {
    auto out = (*model)->Forward(in);
    if (!out.ok()) return *status = out.status(), std::vector<std::vector<float>>{};
    for (int r = 0; r < out->num_sampled; ++r) {
      rows.emplace_back(out->logits.begin() + static_cast<int64_t>(r) * out->vocab_size,
                        out->logits.begin() + static_cast<int64_t>(r + 1) * out->vocab_size);
    }
  }
  return rows;
}

// The GPU's logits are finite and within tolerance of the CPU backend's: both keep bf16 weights and a bf16
// KV cache; cuBLAS rounds prefill activations to bf16 and sums in another order, so rows differ by ~1e-3
// of the logit scale, while a wrong layout, missing head or NaN gives errors of order 1.
// Decode steps replayed from CUDA graphs (batch buckets with padding rows, per-step inputs in fixed buffers)
// against the same model stepping op by op, and GPU top-k / argmax against whole logits rows: the same ids,
// logits within cuBLAS's batch-size dependence (float32 weights: cuBLAS at every m), and the graphs are used.
TEST(LlamaCudaGraphs, GraphStepsAndGpuTopKMatchDirectSteps) {
  if (kernels::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  auto backend = kernels::CreateCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_TRUE((*backend)->supports_graphs());
  auto comm = comm::CreateLocalCommunicator();
  LlamaModelOptions direct_options;
  direct_options.step_graphs = false;
  auto graphs = testing::LoadWholeCheckpoint(dir, backend->get(), comm.get(), {});
  auto direct = testing::LoadWholeCheckpoint(dir, backend->get(), comm.get(), direct_options);
  ASSERT_TRUE(graphs.ok()) << graphs.status();
  ASSERT_TRUE(direct.ok()) << direct.status();
  const auto cases = testing::LoadRefCases(ref);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) {  // 3 sequences: the bucket of 4, one padding row
    for (const auto& rc : cases) prompts.push_back(rc.prompt);
  }
  prompts.resize(std::min<size_t>(prompts.size(), 3));
  testing::DecodeOptions o;
  o.num_new = 40;
  o.num_blocks = 64;
  testing::DecodeResult want = testing::GreedyDecode(**direct, prompts, o);
  ASSERT_TRUE(want.status.ok()) << want.status;
  EXPECT_EQ((*direct)->graph_replays(), 0);
  testing::DecodeResult got = testing::GreedyDecode(**graphs, prompts, o);
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_GT((*graphs)->graph_replays(), 0) << "decode steps never replayed a graph";
  EXPECT_EQ(got.generated, want.generated);
  ASSERT_EQ(got.logits.size(), want.logits.size());
  for (size_t e = 0; e < want.logits.size(); ++e) {
    for (size_t v = 0; v < want.logits[e].size(); ++v) {
      ASSERT_NEAR(got.logits[e][v], want.logits[e][v], 1e-4 * (1 + std::fabs(want.logits[e][v])))
          << "sampling event " << e << " id " << v;
    }
  }
  // GPU argmax (k = 1) and top-5 candidates, through graphs and directly: the same ids as whole rows give.
  for (int k : {1, 5}) {
    for (LlamaModel* m : {graphs->get(), direct->get()}) {
      testing::DecodeOptions ok = o;
      ok.top_k = k;
      testing::DecodeResult top = testing::GreedyDecode(*m, prompts, ok);
      ASSERT_TRUE(top.status.ok()) << top.status;
      EXPECT_EQ(top.generated, want.generated) << "top_k " << k;
      for (size_t e = 0; e < want.logits.size(); ++e) {
        std::vector<float> sorted = want.logits[e];
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        for (int j = 0; j < k; ++j) {
          EXPECT_NEAR(top.logits[e][j], sorted[j], 1e-4 * (1 + std::fabs(sorted[j]))) << "event " << e;
        }
      }
    }
  }
}

TEST(LlamaCuda13B, TwoLayerLogitsAreFiniteAndMatchTheCpuBackend) {
  if (kernels::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  auto gpu = kernels::CreateCudaBackend(0);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  auto cpu = testing::MakeBackend(testing::BackendKind::kCpu, static_cast<int>(std::thread::hardware_concurrency()));
  ASSERT_NE(cpu, nullptr);
  absl::Status gs, cs;
  const auto got = Run13BSteps(gpu->get(), &gs);
  ASSERT_TRUE(gs.ok()) << gs;
  const auto want = Run13BSteps(cpu.get(), &cs);
  ASSERT_TRUE(cs.ok()) << cs;
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(got.size(), 8u);
  for (size_t e = 0; e < got.size(); ++e) {
    ASSERT_EQ(got[e].size(), want[e].size());
    double scale = 1e-3, worst = 0, sum = 0;
    for (float x : want[e]) scale = std::max(scale, std::fabs(static_cast<double>(x)));
    for (size_t i = 0; i < got[e].size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[e][i])) << "row " << e << " id " << i << " is " << got[e][i];
      const double err = std::fabs(static_cast<double>(got[e][i]) - want[e][i]) / scale;
      worst = std::max(worst, err);
      sum += err;
    }
    EXPECT_LE(worst, 2e-2) << "row " << e << ": worst |gpu - cpu| / max|cpu| (scale " << scale << ")";
    EXPECT_LE(sum / static_cast<double>(got[e].size()), 3e-3) << "row " << e << ": mean relative error";
    ::testing::Test::RecordProperty("row" + std::to_string(e) + "_max_rel_err", std::to_string(worst));
  }
}

}  // namespace
}  // namespace tpserve::model
