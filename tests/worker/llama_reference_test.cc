// LlamaModel at TP=1 against independent references (../shared/reference: llama2.c greedy ids, cross-
// checked by a numpy HF forward): exact greedy ids for safetensors / PyTorch / bf16 checkpoints, on the
// reference and CPU backends, with whole-prompt and chunked prefill over paged caches of block size 16 and 4.
#include <cmath>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/model_config.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "tests/worker/llama_test_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

namespace tpserve::model {
namespace {

using testing::BackendKind;
using testing::DecodeOptions;
using testing::GreedyDecode;

struct Loaded {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<LlamaModel> model;
};

Loaded LoadTp1(const std::string& dir, BackendKind kind, LlamaModelOptions mo = {}) {
  Loaded l;
  l.backend = testing::MakeBackend(kind);
  l.comm = comm::CreateLocalCommunicator();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ShardSpec> spec = ShardSpec::Create(*config, 0, 1);
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<std::unique_ptr<checkpoint::Checkpoint>> ckpt = checkpoint::Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok() || !spec.ok() || l.backend == nullptr) return l;
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = LlamaModel::Load(**ckpt, *spec, l.backend.get(), l.comm.get(), mo);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) l.model = std::move(*m);
  return l;
}

struct Case {
  std::string name;
  std::string model;      // under ../shared/models
  std::string reference;  // under ../shared/reference
  BackendKind backend;
  int chunk;
  int block_size;
  int num_new;  // 0 => every reference id
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class LlamaReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(LlamaReferenceTest, GreedyIdsMatchTheReferenceExactly) {
  const Case& c = GetParam();
  TP_REQUIRE_SHARED(dir, "models/" + c.model);
  TP_REQUIRE_SHARED(ref, "reference/" + c.reference);
  const std::vector<testing::RefCase> cases = testing::LoadRefCases(ref);
  ASSERT_FALSE(cases.empty());
  Loaded l = LoadTp1(dir, c.backend);
  ASSERT_NE(l.model, nullptr);

  std::vector<std::vector<int32_t>> prompts;
  size_t num_new = c.num_new > 0 ? static_cast<size_t>(c.num_new) : SIZE_MAX;
  for (const auto& rc : cases) {
    prompts.push_back(rc.prompt);
    num_new = std::min(num_new, rc.generated.size());
  }
  DecodeOptions o;
  o.chunk = c.chunk;
  o.block_size = c.block_size;
  o.num_blocks = 2 * 512 / c.block_size + 8;
  o.num_new = static_cast<int>(num_new);
  testing::DecodeResult r = GreedyDecode(*l.model, prompts, o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> want(cases[i].generated.begin(), cases[i].generated.begin() + num_new);
    ASSERT_EQ(r.generated[i].size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) {
      ASSERT_EQ(r.generated[i][k], want[k]) << "case " << i << " token " << k << " of " << want.size();
    }
  }
  // Logit values of the first step against the reference's top 5 (llama2.c, float32).
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<float>& first = r.logits[i];  // the first sampling event of sequence i
    for (const auto& [id, logit] : cases[i].first_top5) {
      EXPECT_NEAR(first[id], logit, 2e-4 + 1e-5 * std::fabs(logit)) << "case " << i << " id " << id;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Stories260K, LlamaReferenceTest,
    ::testing::Values(
        Case{"SafetensorsReferenceWhole", "stories260K", "stories260K.json", BackendKind::kReference, 0, 16, 0},
        Case{"SafetensorsCpuWhole", "stories260K", "stories260K.json", BackendKind::kCpu, 0, 16, 0},
        Case{"SafetensorsReferenceChunk3Block4", "stories260K", "stories260K.json", BackendKind::kReference, 3, 4, 0},
        Case{"SafetensorsCpuChunk2Block4", "stories260K", "stories260K.json", BackendKind::kCpu, 2, 4, 0},
        Case{"TorchReferenceChunk2Block16", "stories260K-pt", "stories260K.json", BackendKind::kReference, 2, 16, 0},
        Case{"TorchCpuWhole", "stories260K-pt", "stories260K.json", BackendKind::kCpu, 0, 16, 0},
        Case{"TorchCpuChunk4Block4", "stories260K-pt", "stories260K.json", BackendKind::kCpu, 4, 4, 0},
        Case{"Bf16ReferenceWhole", "stories260K-pt-bf16", "stories260K-bf16.json", BackendKind::kReference, 0, 16, 0},
        Case{"Bf16CpuChunk2Block4", "stories260K-pt-bf16", "stories260K-bf16.json", BackendKind::kCpu, 2, 4, 0},
        Case{"Bf16CpuWhole", "stories260K-pt-bf16", "stories260K-bf16.json", BackendKind::kCpu, 0, 16, 0}),
    CaseName);

// One sequence alone and the same sequence batched with another give bitwise-identical logits (batch
// invariance): greedy output must not change under concurrency.
TEST(LlamaModelTest, LogitsDoNotDependOnTheBatch) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  const std::vector<testing::RefCase> cases = testing::LoadRefCases(ref);
  for (BackendKind kind : {BackendKind::kReference, BackendKind::kCpu}) {
    Loaded l = LoadTp1(dir, kind);
    ASSERT_NE(l.model, nullptr);
    DecodeOptions o;
    o.num_new = 12;
    testing::DecodeResult alone = GreedyDecode(*l.model, {cases[0].prompt}, o);
    testing::DecodeResult both = GreedyDecode(*l.model, {cases[1].prompt, cases[0].prompt}, o);
    ASSERT_TRUE(alone.status.ok() && both.status.ok());
    ASSERT_EQ(alone.generated[0], both.generated[1]);
    // Sampling events of `both` alternate seq 0 / seq 1 per step.
    for (int k = 0; k < o.num_new; ++k) {
      ASSERT_EQ(alone.logits[k], both.logits[2 * k + 1]) << "step " << k;
    }
  }
}

// StepInput::top_k brings back each sampled row's top candidates and log-sum-exp instead of the row: the
// same ids and logits as the whole row sorted (ties -> lower id), and its log-sum-exp.
TEST(LlamaModelTest, TopKCandidatesAreTheWholeRowsBest) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  for (BackendKind kind : {BackendKind::kReference, BackendKind::kCpu}) {
    Loaded l = LoadTp1(dir, kind);
    ASSERT_NE(l.model, nullptr);
    ASSERT_TRUE(l.model->AllocateKv(8, 16).ok());
    StepInput in;
    for (int i = 0; i < 2; ++i) {
      SeqInput s;
      s.seq_id = i;
      s.token_ids = {1, 403 + 7 * i, 29};
      s.block_table = {i};
      s.sample = true;
      in.seqs.push_back(s);
    }
    absl::StatusOr<StepOutput> whole = l.model->Forward(in);
    ASSERT_TRUE(whole.ok()) << whole.status();
    in.top_k = 5;
    absl::StatusOr<StepOutput> top = l.model->Forward(in);  // rewrites the same K/V
    ASSERT_TRUE(top.ok()) << top.status();
    EXPECT_TRUE(top->logits.empty());
    ASSERT_EQ(top->top_k, 5);
    const int V = whole->vocab_size;
    for (int r = 0; r < 2; ++r) {
      const float* row = whole->logits.data() + r * V;
      std::vector<int32_t> idx(V);
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      double mx = row[idx[0]], sum = 0;
      for (int j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
      for (int j = 0; j < 5; ++j) {
        EXPECT_EQ(top->top_ids[r * 5 + j], idx[j]) << "row " << r << " rank " << j;
        EXPECT_EQ(top->top_logits[r * 5 + j], row[idx[j]]) << "row " << r << " rank " << j;
      }
      EXPECT_NEAR(top->lse[r], mx + std::log(sum), 1e-5);
    }
    in.top_k = kMaxStepTopK + 1;
    absl::Status st = l.model->Forward(in).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(st.message(), "top_k")) << st;
  }
}

// Speculative verification (issue 17) rests on this: a step that runs a sequence's last token plus k more
// with logits for all k + 1 positions (SeqInput.num_logits) gives bitwise the logits of k + 1 single decode
// steps, next to another sequence's decode in the same batch.
TEST(LlamaModelTest, VerifyRowsEqualSingleDecodeSteps) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref, "reference/stories260K.json");
  const std::vector<testing::RefCase> cases = testing::LoadRefCases(ref);
  for (BackendKind kind : {BackendKind::kReference, BackendKind::kCpu}) {
    Loaded l = LoadTp1(dir, kind);
    ASSERT_NE(l.model, nullptr);
    const int bs = 4;
    ASSERT_TRUE(l.model->AllocateKv(64, bs).ok());
    const int vocab = l.model->config().vocab_size;
    std::vector<int32_t> tokens = cases[0].prompt;
    tokens.insert(tokens.end(), cases[0].generated.begin(), cases[0].generated.begin() + 9);
    const int p = static_cast<int>(cases[0].prompt.size());
    auto table = [&](int first) {
      std::vector<int32_t> t;
      for (int b = 0; b < 16; ++b) t.push_back(first + b);
      return t;
    };
    // Sequence A (blocks 0-15): prefill the prompt, then one token per step, keeping every step's logits.
    std::vector<std::vector<float>> single;
    for (int pos = 0; pos < static_cast<int>(tokens.size()); ) {
      StepInput in;
      SeqInput q;
      q.start_position = pos;
      const int n = pos == 0 ? p : 1;
      q.token_ids.assign(tokens.begin() + pos, tokens.begin() + pos + n);
      q.block_table = table(0);
      q.sample = true;
      in.seqs.push_back(q);
      auto out = l.model->Forward(in);
      ASSERT_TRUE(out.ok()) << out.status();
      single.emplace_back(out->logits.begin(), out->logits.end());
      pos += n;
    }
    // Sequence B (blocks 16-31): the same prompt, then all 9 later tokens in one step with 9 logits rows,
    // batched with a decode of sequence C (blocks 32-47).
    StepInput pre;
    for (int first : {16, 32}) {
      SeqInput q;
      q.token_ids = cases[0].prompt;
      q.block_table = table(first);
      pre.seqs.push_back(q);
    }
    ASSERT_TRUE(l.model->Forward(pre).ok());
    StepInput verify;
    SeqInput c;
    c.token_ids = {tokens[p]};
    c.start_position = p;
    c.block_table = table(32);
    c.sample = true;
    verify.seqs.push_back(c);
    SeqInput v;
    v.token_ids.assign(tokens.begin() + p, tokens.end());
    v.start_position = p;
    v.block_table = table(16);
    v.sample = true;
    v.num_logits = static_cast<int>(v.token_ids.size());
    verify.seqs.push_back(v);
    auto out = l.model->Forward(verify);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->num_sampled, 1 + v.num_logits);
    for (int i = 0; i < v.num_logits; ++i) {
      const std::vector<float> row(out->logits.begin() + (1 + i) * vocab, out->logits.begin() + (2 + i) * vocab);
      ASSERT_EQ(row, single[1 + i]) << "position " << p + i;
    }
    // num_logits outside [1, tokens] is refused.
    verify.seqs[1].num_logits = 10;
    EXPECT_EQ(l.model->Forward(verify).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(LlamaModelTest, RejectsBadStepsWithActionableErrors) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  Loaded l = LoadTp1(dir, BackendKind::kReference);
  ASSERT_NE(l.model, nullptr);
  StepInput in;
  SeqInput s;
  s.seq_id = 7;
  s.token_ids = {1, 403};
  s.block_table = {0};
  s.sample = true;
  in.seqs.push_back(s);
  EXPECT_EQ(l.model->Forward(in).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(l.model->AllocateKv(4, 16).ok());
  EXPECT_TRUE(l.model->Forward(in).ok());

  in.seqs[0].token_ids = {1, 512};
  absl::Status st = l.model->Forward(in).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "seq_id 7")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "token_ids[1] = 512")) << st;

  in.seqs[0].token_ids = {1, 2};
  in.seqs[0].start_position = 15;  // positions 15, 16 need 2 blocks
  st = l.model->Forward(in).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "block_table")) << st;

  in.seqs[0].block_table = {0, 4};
  st = l.model->Forward(in).status();
  EXPECT_TRUE(absl::StrContains(st.message(), "block_table[1] = 4")) << st;

  in.seqs[0].block_table = {0, 1};
  in.seqs[0].start_position = 511;
  st = l.model->Forward(in).status();
  EXPECT_TRUE(absl::StrContains(st.message(), "max_position_embeddings")) << st;

  in.seqs[0].token_ids.clear();
  in.seqs[0].start_position = 0;
  EXPECT_EQ(l.model->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(l.model->AllocateKv(0, 16).ok());
}

// Reads a .npy written by WriteNpy back: shape from the header, float32 data.
std::vector<float> ReadNpy(const std::string& path, std::vector<int64_t>* shape) {
  std::ifstream f(path, std::ios::binary);
  char magic[10];
  f.read(magic, 10);
  const int len = static_cast<unsigned char>(magic[8]) | (static_cast<unsigned char>(magic[9]) << 8);
  std::string header(len, ' ');
  f.read(header.data(), len);
  EXPECT_EQ((10 + len) % 64, 0);
  const size_t open = header.find("'shape': (") + 10;
  const size_t close = header.find(')', open);
  shape->clear();
  int64_t n = 1;
  for (absl::string_view d : absl::StrSplit(header.substr(open, close - open), ',', absl::SkipWhitespace())) {
    shape->push_back(std::stoll(std::string(d)));
    n *= shape->back();
  }
  std::vector<float> data(n);
  f.read(reinterpret_cast<char*>(data.data()), n * sizeof(float));
  return data;
}

TEST(LlamaModelTest, DumpsNamedActivationsAsNpy) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  const std::string dump = ::tpserve::testing::MakeTempDir("llama_dump");
  LlamaModelOptions mo;
  mo.dump_dir = dump;
  Loaded l = LoadTp1(dir, BackendKind::kReference, mo);
  ASSERT_NE(l.model, nullptr);
  ASSERT_TRUE(l.model->AllocateKv(4, 16).ok());
  StepInput in;
  SeqInput s;
  s.token_ids = {1, 403, 407};
  s.block_table = {2};
  s.sample = true;
  in.seqs.push_back(s);
  absl::StatusOr<StepOutput> out = l.model->Forward(in);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string step = dump + "/step000000/";
  std::vector<int64_t> shape;
  for (const char* f : {"embed.npy", "layer00.attn_norm.npy", "layer04.residual.npy", "layer02.gate_up.npy",
                        "final_norm.npy"}) {
    EXPECT_TRUE(std::filesystem::exists(step + f)) << f;
  }
  ReadNpy(step + "layer01.q.npy", &shape);
  EXPECT_EQ(shape, (std::vector<int64_t>{3, 64}));
  ReadNpy(step + "layer03.gate_up.npy", &shape);
  EXPECT_EQ(shape, (std::vector<int64_t>{3, 344}));
  std::vector<float> logits = ReadNpy(step + "logits.npy", &shape);
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 512}));
  EXPECT_EQ(logits, out->logits);
  std::filesystem::remove_all(dump);
}

}  // namespace
}  // namespace tpserve::model
