// stories260K end to end on the GPU: the CUDA backend's greedy ids equal ../shared/reference (llama2.c) from
// safetensors and from the bf16 PyTorch shards. Skips without a GPU (scripts/gpu-check.sh runs it on one).
#include <string>
#include <vector>

#include "common/model_config.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

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
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto spec = ShardSpec::Create(*config, 0, 1);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto ckpt = checkpoint::Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto model = LlamaModel::Load(**ckpt, *spec, backend->get(), comm.get(), {});
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

}  // namespace
}  // namespace tpserve::model
