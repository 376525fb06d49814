// `tpserve serve --quantization int8` end to end on 127.0.0.1: stories260K (float32) at TP=2 through real
// worker processes reports weight_format "int8" in GetModelInfo and tpserve:weight_format_info, and its
// greedy ids over 160 tokens equal those of the same int8 model loaded in-process at TP=1 (each rank
// quantizes its own slice with the whole row's scale, worker/model/quantization.h).
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/model_config.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

// Greedy ids of the in-process TP=1 int8 model, the expectation for the served one.
std::vector<std::vector<int32_t>> InProcessInt8Greedy(const std::string& dir,
                                                      const std::vector<std::vector<int32_t>>& prompts, int n) {
  auto backend = model::testing::MakeBackend(model::testing::BackendKind::kCpu, 2);
  auto comm = comm::CreateLocalCommunicator();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<model::ShardSpec> spec = model::ShardSpec::Create(*config, 0, 1);
  absl::StatusOr<std::unique_ptr<checkpoint::Checkpoint>> ckpt = checkpoint::Checkpoint::Open(dir);
  EXPECT_TRUE(spec.ok() && ckpt.ok());
  model::LlamaModelOptions mo;
  mo.quantization = model::WeightQuantization::kInt8;
  absl::StatusOr<std::unique_ptr<model::LlamaModel>> m =
      model::LlamaModel::Load(**ckpt, *spec, backend.get(), comm.get(), mo);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  model::testing::DecodeOptions o;
  o.num_new = n;
  o.num_blocks = 2 * 512 / 16 * static_cast<int>(prompts.size());
  model::testing::DecodeResult r = model::testing::GreedyDecode(**m, prompts, o);
  EXPECT_TRUE(r.status.ok()) << r.status;
  return r.generated;
}

TEST(QuantizationServeTest, Int8Tp2ReportsItsFormatAndMatchesInProcessTp1) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& rc : ref["cases"]) prompts.push_back(rc["prompt_ids"].get<std::vector<int32_t>>());
  constexpr int kNew = 160;
  const std::vector<std::vector<int32_t>> want = InProcessInt8Greedy(model_dir, prompts, kNew);
  ASSERT_EQ(want.size(), prompts.size());

  ServerProcess server({model_dir, 2, {"--quantization=int8", "--max_num_seqs=8"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ModelInfo info;
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(info.weight_format(), "int8");
    EXPECT_EQ(info.dtype(), "float32");  // the embedding / activations keep the checkpoint's dtype
  }
  const std::string metrics = server.HttpGet("/metrics");
  EXPECT_TRUE(absl::StrContains(metrics, "tpserve:weight_format_info{")) << metrics.substr(0, 2000);
  EXPECT_TRUE(absl::StrContains(metrics, "weight_format=\"int8\""));

  size_t i = 0;
  for (const auto& rc : ref["cases"]) {
    v1::GenerateRequest req = GreedyRequest(rc["prompt"].get<std::string>(), kNew);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::GenerateResponse resp;
    grpc::Status s = stub->Generate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << server.ReadLog();
    EXPECT_EQ(std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end()), want[i])
        << "prompt '" << rc["prompt"].get<std::string>() << "'";
    ++i;
  }
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

}  // namespace
}  // namespace tpserve::testing
