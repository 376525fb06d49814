// LlamaModel's decode-step graphs (LlamaModelOptions::step_graphs) checked without a GPU: RecordingBackend
// wraps the CPU backend and gives Backend's graph contract the semantics of CUDA stream capture. Between
// BeginGraph and EndGraph ops are recorded with their arguments (pointers included) instead of run, and
// ReplayGraph runs them again on whatever the buffers hold then; a memory op while recording is a contract
// violation the test reports. The CPU backend is batch-invariant, so graph steps (padded to a bucket) must
// give bitwise the logits of op-by-op steps. Dropped graphs (NOT_FOUND, as when CUDA scratch moves) must be
// recorded again.
#include <functional>
#include <map>
#include <memory>
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

using kernels::AttentionBatch;
using kernels::KvCache;
using kernels::WeightView;

class RecordingBackend : public kernels::Backend {
 public:
  explicit RecordingBackend(std::unique_ptr<kernels::Backend> inner) : inner_(std::move(inner)) {}

  int violations = 0;      // memory ops issued while recording
  int drop_every = 0;      // > 0: every drop_every-th replay finds its graph dropped (NOT_FOUND)
  int replays = 0;
  int recorded = 0;

  std::string name() const override { return "recording(" + inner_->name() + ")"; }
  bool is_host() const override { return true; }
  void* Alloc(size_t bytes) override {
    Guard();
    return inner_->Alloc(bytes);
  }
  void Free(void* p) override {
    Guard();
    inner_->Free(p);
  }
  void Upload(void* dst, const void* src, size_t bytes) override {
    Guard();
    inner_->Upload(dst, src, bytes);
  }
  void Download(void* dst, const void* src, size_t bytes) override {
    Guard();
    inner_->Download(dst, src, bytes);
  }
  void Synchronize() override {
    Guard();
    inner_->Synchronize();
  }

  void Matmul(const float* x, int64_t m, const WeightView& w, float* y) override {
    Op([=] { inner_->Matmul(x, m, w, y); });
  }
  void Embedding(const int32_t* ids, int64_t n, const WeightView& t, int64_t vb, float* out) override {
    Op([=] { inner_->Embedding(ids, n, t, vb, out); });
  }
  void RmsNorm(const float* x, int64_t rows, const WeightView& w, float eps, float* out) override {
    Op([=] { inner_->RmsNorm(x, rows, w, eps, out); });
  }
  void AddRmsNorm(float* r, const float* x, int64_t rows, const WeightView& w, float eps, float* out) override {
    Op([=] { inner_->AddRmsNorm(r, x, rows, w, eps, out); });
  }
  void Rope(float* q, float* k, const int32_t* pos, int64_t n, int nq, int nk, int hd, float theta) override {
    Op([=] { inner_->Rope(q, k, pos, n, nq, nk, hd, theta); });
  }
  void SiluMul(const float* gu, int64_t rows, int64_t inter, float* out) override {
    Op([=] { inner_->SiluMul(gu, rows, inter, out); });
  }
  void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out) override {
    Op([=] { inner_->GatherRows(x, rows, n, dim, out); });
  }
  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const kernels::KvCacheSpec& spec) override {
    Guard();
    return inner_->CreateKvCache(spec);
  }
  size_t KvBlockBytes(const kernels::KvCacheSpec& spec) const override { return inner_->KvBlockBytes(spec); }
  void WriteKv(KvCache& cache, int layer, const float* k, const float* v, const AttentionBatch& b) override {
    KvCache* c = &cache;
    Op([=] { inner_->WriteKv(*c, layer, k, v, b); });
  }
  void Attention(const KvCache& cache, int layer, const float* q, const AttentionBatch& b, int nq, float scale,
                 float* out) override {
    const KvCache* c = &cache;
    Op([=] { inner_->Attention(*c, layer, q, b, nq, scale, out); });
  }
  void TopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k, int32_t* ids,
            float* values, float* lse) override {
    Op([=] { inner_->TopK(logits, rows, parts, part_len, vocab, k, ids, values, lse); });
  }

  bool supports_graphs() const override { return true; }
  absl::Status BeginGraph() override {
    if (recording_) return absl::FailedPreconditionError("nested BeginGraph");
    recording_ = true;
    tape_.clear();
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> EndGraph() override {
    if (!recording_) return absl::FailedPreconditionError("EndGraph without BeginGraph");
    recording_ = false;
    graphs_[next_] = std::move(tape_);
    ++recorded;
    return next_++;
  }
  absl::Status ReplayGraph(int64_t handle) override {
    auto it = graphs_.find(handle);
    if (it == graphs_.end()) return absl::NotFoundError("dropped");
    if (drop_every > 0 && ++replay_calls_ % drop_every == 0) {
      graphs_.clear();
      return absl::NotFoundError("dropped");
    }
    ++replays;
    for (const auto& op : it->second) op();
    return absl::OkStatus();
  }
  void ReleaseGraph(int64_t handle) override { graphs_.erase(handle); }

 private:
  void Op(std::function<void()> f) {
    if (recording_) {
      tape_.push_back(std::move(f));
    } else {
      f();
    }
  }
  void Guard() {
    if (recording_) ++violations;
  }

  std::unique_ptr<kernels::Backend> inner_;
  bool recording_ = false;
  std::vector<std::function<void()>> tape_;
  std::map<int64_t, std::vector<std::function<void()>>> graphs_;
  int64_t next_ = 1;
  int replay_calls_ = 0;
};

TEST(LlamaGraphTest, GraphStepsEqualOpByOpStepsBitwise) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  const auto cases = testing::LoadRefCases(ref);
  auto comm = comm::CreateLocalCommunicator();
  auto plain = testing::MakeBackend(testing::BackendKind::kCpu);
  RecordingBackend rec(testing::MakeBackend(testing::BackendKind::kCpu));
  auto direct = testing::LoadWholeCheckpoint(dir, plain.get(), comm.get(), {});
  auto graphs = testing::LoadWholeCheckpoint(dir, &rec, comm.get(), {});
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_TRUE(graphs.ok()) << graphs.status();
  // 1, 3 (bucket 4: one padding row) and 5 (bucket 8) sequences; prefill in chunks so that steps mix.
  for (size_t n : {size_t{1}, size_t{3}, size_t{5}}) {
    SCOPED_TRACE(::testing::Message() << n << " sequences");
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = 0; i < n; ++i) prompts.push_back(cases[i % cases.size()].prompt);
    testing::DecodeOptions o;
    o.chunk = 5;
    o.num_new = 24;
    o.num_blocks = 96;
    for (int top_k : {0, 1, 4}) {
      o.top_k = top_k;
      rec.drop_every = top_k == 4 ? 3 : 0;  // graphs dropped now and then: recorded again
      const int replays_before = rec.replays;
      testing::DecodeResult want = testing::GreedyDecode(**direct, prompts, o);
      testing::DecodeResult got = testing::GreedyDecode(**graphs, prompts, o);
      ASSERT_TRUE(want.status.ok() && got.status.ok()) << want.status << got.status;
      EXPECT_EQ(got.generated, want.generated) << "top_k " << top_k;
      EXPECT_EQ(got.logits, want.logits) << "top_k " << top_k;
      EXPECT_GT(rec.replays, replays_before) << "no decode step replayed a graph, top_k " << top_k;
    }
  }
  EXPECT_EQ(rec.violations, 0) << "memory ops (Upload / Download / Alloc / Synchronize) while recording";
  EXPECT_EQ((*direct)->graph_replays(), 0);  // the CPU backend does not record graphs
  EXPECT_GT((*graphs)->graph_replays(), 0);
}

}  // namespace
}  // namespace tpserve::model
