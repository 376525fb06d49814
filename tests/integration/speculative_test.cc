// Speculative decoding through real processes (issue 17): `tpserve serve --speculative-method ngram|draft` at
// TP = 1 and 2, k = 1, 4, 8, gives exactly the greedy token ids of ../shared/reference (llama2.c / NumPy HF
// forward) for requests running concurrently, and reports what it proposed and accepted (usage.speculative
// and the tpserve:spec_decode_* metrics). The draft method runs with the target as its own draft (it agrees:
// nearly every proposal is kept) and with a different random model of the same vocabulary (it disagrees:
// nearly nothing is kept), and the output is the reference either way.
#include <signal.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"
#include "tools/model/synthetic_model.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

enum class Proposer { kNgram, kSelfDraft, kRandomDraft };

struct Case {
  int tp;
  int k;
  Proposer proposer = Proposer::kNgram;
};

std::string ProposerName(Proposer p) {
  switch (p) {
    case Proposer::kNgram: return "ngram";
    case Proposer::kSelfDraft: return "selfdraft";
    case Proposer::kRandomDraft: return "randomdraft";
  }
  return "?";
}

void PrintTo(const Case& c, std::ostream* os) { *os << ProposerName(c.proposer) << " tp" << c.tp << " k" << c.k; }

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  return ProposerName(info.param.proposer) + "_tp" + std::to_string(info.param.tp) + "_k" +
         std::to_string(info.param.k);
}

// A random-weight 1-layer model with stories260K's vocabulary (512, bos 1, eos 2) and nothing else in common:
// a draft that always disagrees. Written once per test process.
std::string WriteRandomDraft(const std::string& dir, int vocab_size) {
  model::SyntheticModelOptions o;
  o.out_dir = dir;
  o.preset = "tiny";
  o.num_layers = 1;
  o.dtype = DType::kF32;
  o.seed = 17;
  o.vocab_size = vocab_size;
  absl::Status s = model::WriteSyntheticModel(o);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

std::string RandomDraftDir(int vocab_size = 512) {
  static ScopedTempDir same_vocab("random-draft");  // removed at exit
  static ScopedTempDir other_vocab("random-draft-vocab");
  static const std::string same = WriteRandomDraft(same_vocab.path, 512);
  if (vocab_size == 512) return same;
  static const std::string other = WriteRandomDraft(other_vocab.path, vocab_size);
  return other;
}

// serve flags that turn speculation on with `proposer`.
std::vector<std::string> SpeculationFlags(Proposer proposer, const std::string& model_dir, int k) {
  std::vector<std::string> flags = {"--num-speculative-tokens=" + std::to_string(k)};
  switch (proposer) {
    case Proposer::kNgram:
      flags.insert(flags.end(), {"--speculative-method=ngram", "--ngram-max=3", "--ngram-min=1"});
      break;
    case Proposer::kSelfDraft:
      flags.insert(flags.end(), {"--speculative-method=draft", "--draft-model=" + model_dir});
      break;
    case Proposer::kRandomDraft:
      flags.insert(flags.end(), {"--speculative-method=draft", "--draft-model=" + RandomDraftDir()});
      break;
  }
  return flags;
}

class SpeculativeServeTest : public ::testing::TestWithParam<Case> {};

TEST_P(SpeculativeServeTest, GreedyIdsEqualReference) {
  const Case& c = GetParam();
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));

  std::vector<std::string> flags = SpeculationFlags(c.proposer, model_dir, c.k);
  flags.push_back("--max_num_seqs=8");
  ServerProcess server({model_dir, c.tp, flags});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();

  // Each reference case twice, all at once: verify steps of several sequences share the batch.
  struct Outcome {
    grpc::Status status;
    v1::GenerateResponse resp;
  };
  const int num_cases = static_cast<int>(ref["cases"].size());
  std::vector<Outcome> outcomes(2 * num_cases);
  std::vector<std::thread> clients;
  for (int i = 0; i < 2 * num_cases; ++i) {
    clients.emplace_back([&, i] {
      const auto& rc = ref["cases"][i % num_cases];
      const v1::GenerateRequest req =
          GreedyRequest(rc["prompt"].get<std::string>(), static_cast<int>(rc["generated_ids"].size()));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      outcomes[i].status = server.NewStub()->Generate(&ctx, req, &outcomes[i].resp);
    });
  }
  for (auto& t : clients) t.join();
  int accepted = 0, proposed = 0;
  for (int i = 0; i < 2 * num_cases; ++i) {
    const auto& rc = ref["cases"][i % num_cases];
    const Outcome& o = outcomes[i];
    ASSERT_TRUE(o.status.ok()) << o.status.error_message() << "\n" << server.ReadLog();
    std::vector<int32_t> want = rc["generated_ids"];
    std::vector<int32_t> got(o.resp.token_ids().begin(), o.resp.token_ids().end());
    EXPECT_EQ(got, want) << "request " << i << " at tp " << c.tp << " k " << c.k;
    EXPECT_EQ(o.resp.usage().completion_tokens(), static_cast<int>(want.size()));
    const v1::SpeculativeUsage& u = o.resp.usage().speculative();
    EXPECT_LE(u.num_accepted_tokens(), u.num_draft_tokens());
    EXPECT_LE(u.num_draft_tokens(), u.num_drafts() * c.k);
    accepted += u.num_accepted_tokens();
    proposed += u.num_draft_tokens();
  }
  switch (c.proposer) {
    case Proposer::kNgram:  // the trained model's greedy stories repeat themselves: some proposals are right
      EXPECT_GT(accepted, 0);
      break;
    case Proposer::kSelfDraft:  // the same model proposes: only batch-shape rounding could ever disagree
      EXPECT_GT(accepted, 0);
      EXPECT_GE(accepted, proposed * 9 / 10) << accepted << " of " << proposed << " proposals kept";
      break;
    case Proposer::kRandomDraft:  // proposals were verified (and nearly all rejected), the ids still equal
      EXPECT_GT(proposed, 0);
      EXPECT_LE(accepted, proposed / 2) << accepted << " of " << proposed << " proposals kept";
      break;
  }
  const std::string metrics = server.HttpGet("/metrics");
  const std::string label = "{model_name=\"stories260K\"}";
  EXPECT_EQ(MetricValue(metrics, "tpserve:spec_decode_num_accepted_tokens_total" + label), accepted);
  EXPECT_GT(MetricValue(metrics, "tpserve:spec_decode_num_drafts_total" + label), 0);
  EXPECT_GE(MetricValue(metrics, "tpserve:spec_decode_num_draft_tokens_total" + label), accepted);
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

INSTANTIATE_TEST_SUITE_P(Stories260K, SpeculativeServeTest,
                         ::testing::Values(Case{1, 1}, Case{1, 4}, Case{1, 8}, Case{2, 1}, Case{2, 4}, Case{2, 8}),
                         Name);

INSTANTIATE_TEST_SUITE_P(
    Stories260KDraft, SpeculativeServeTest,
    ::testing::Values(Case{1, 1, Proposer::kSelfDraft}, Case{1, 4, Proposer::kSelfDraft},
                      Case{1, 8, Proposer::kSelfDraft}, Case{2, 1, Proposer::kSelfDraft},
                      Case{2, 4, Proposer::kSelfDraft}, Case{2, 8, Proposer::kSelfDraft},
                      Case{1, 1, Proposer::kRandomDraft}, Case{1, 4, Proposer::kRandomDraft},
                      Case{1, 8, Proposer::kRandomDraft}, Case{2, 1, Proposer::kRandomDraft},
                      Case{2, 4, Proposer::kRandomDraft}, Case{2, 8, Proposer::kRandomDraft}),
    Name);

// 16 concurrent streams, every other one opted out (GenerateRequest.no_speculation): each gets the reference
// ids, the opted-out ones carry no proposal, and the others do. Both methods; the draft one at TP = 2.
TEST(SpeculativeMixedTest, SixteenStreamsMixedWithPlainRequestsEqualReference) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));
  const int num_cases = static_cast<int>(ref["cases"].size());
  for (const auto& [proposer, tp] : {std::pair{Proposer::kNgram, 1}, std::pair{Proposer::kSelfDraft, 2}}) {
    std::vector<std::string> flags = SpeculationFlags(proposer, model_dir, 4);
    flags.push_back("--max_num_seqs=16");
    ServerProcess server({model_dir, tp, flags});
    ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
    constexpr int kStreams = 16;
    std::vector<std::vector<int32_t>> ids(kStreams);
    std::vector<grpc::Status> status(kStreams);
    std::vector<v1::SpeculativeUsage> usage(kStreams);
    std::vector<std::thread> clients;
    for (int i = 0; i < kStreams; ++i) {
      clients.emplace_back([&, i] {
        const auto& rc = ref["cases"][i % num_cases];
        v1::GenerateRequest req =
            GreedyRequest(rc["prompt"].get<std::string>(), static_cast<int>(rc["generated_ids"].size()));
        req.set_no_speculation(i / num_cases % 2 == 1);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(180));
        auto reader = server.NewStub()->GenerateStream(&ctx, req);
        v1::GenerateStreamResponse msg;
        while (reader->Read(&msg)) {
          ids[i].insert(ids[i].end(), msg.token_ids().begin(), msg.token_ids().end());
          if (msg.has_usage()) usage[i] = msg.usage().speculative();
        }
        status[i] = reader->Finish();
      });
    }
    for (auto& t : clients) t.join();
    int accepted = 0;
    for (int i = 0; i < kStreams; ++i) {
      const std::string what = ProposerName(proposer) + " stream " + std::to_string(i);
      ASSERT_TRUE(status[i].ok()) << what << ": " << status[i].error_message() << "\n" << server.LogTail();
      EXPECT_EQ(ids[i], ref["cases"][i % num_cases]["generated_ids"].get<std::vector<int32_t>>()) << what;
      if (i / num_cases % 2 == 1) {
        EXPECT_EQ(usage[i].num_drafts(), 0) << what << " opted out";
      } else {
        accepted += usage[i].num_accepted_tokens();
      }
    }
    EXPECT_GT(accepted, 0) << ProposerName(proposer);
    EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
  }
}

// A worker killed with kill -9 while speculating requests are in flight: the launcher restarts the group, the
// coordinator replays every request from its token history (the draft's cache is rebuilt from it on rank 0),
// and each request still gets exactly the reference ids. The two runs kill different worker processes
// (ChildPids' rank order is unknown). max_num_seqs 4 with 6 requests: some are waiting, some mid-verify, when
// the worker dies.
TEST(SpeculativeWorkerLossTest, GreedyIdsEqualReferenceAcrossAWorkerKillAndReplay) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));
  const int num_cases = static_cast<int>(ref["cases"].size());
  constexpr int kRequests = 6;
  std::vector<std::pair<std::string, int>> requests;
  for (int i = 0; i < kRequests; ++i) {
    const auto& rc = ref["cases"][i % num_cases];
    requests.emplace_back(rc["prompt"].get<std::string>(), static_cast<int>(rc["generated_ids"].size()));
  }
  const std::string label = "{model_name=\"stories260K\"}";
  for (const auto& [proposer, killed] : {std::pair{Proposer::kNgram, 1}, std::pair{Proposer::kSelfDraft, 0}}) {
    const std::string what = ProposerName(proposer);
    std::vector<std::string> flags = SpeculationFlags(proposer, model_dir, 4);
    flags.push_back("--max_num_seqs=4");
    ServerProcess server({model_dir, 2, flags});
    ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
    std::atomic<int> seen{0};
    std::vector<StreamOutcome> out;
    std::thread clients([&] { out = RunGreedyStreams(server, requests, &seen, absl::Seconds(180)); });
    // Mid-way (6 x 196 tokens in all), after proposals have been verified, so the kill lands on speculating
    // sequences.
    if (auto mid = server.WaitUntil(
            [&] {
              return seen.load() >= 120 &&
                     MetricValue(server.HttpGet("/metrics"), "tpserve:spec_decode_num_drafts_total" + label) > 0;
            },
            what + ": 120 streamed tokens and a verified proposal");
        !mid) {
      server.Signal(SIGKILL);  // ends the streams, so the client thread can be joined
      clients.join();
      FAIL() << mid.message();
    }
    std::vector<pid_t> workers = server.ChildPids();
    ASSERT_EQ(workers.size(), 2u) << what;
    const int seen_at_kill = seen.load();
    kill(workers[killed], SIGKILL);
    clients.join();
    ASSERT_LT(seen_at_kill, kRequests * 196) << what << ": every token had arrived before the kill";
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_TRUE(out[i].status.ok()) << what << " request " << i << ": " << out[i].status.error_message() << "\n"
                                      << server.LogTail();
      EXPECT_EQ(out[i].ids, ref["cases"][i % num_cases]["generated_ids"].get<std::vector<int32_t>>())
          << what << " request " << i;
    }
    EXPECT_NE(server.ReadLog().find("replaying"), std::string::npos) << what << ": no replay\n" << server.LogTail();
    EXPECT_GT(MetricValue(server.HttpGet("/metrics"), "tpserve:spec_decode_num_accepted_tokens_total" + label), 0)
        << what;
    EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
  }
}

// Seeded sampling with speculation: the same tokens as without it. The worker samples each verified position
// with the counter-based RNG keyed by (seed, token index) and the same history, so a proposal is kept only
// when it is the token the plain run draws there. Repetition and frequency penalties read the history too.
TEST(SpeculativeSamplingTest, SeededSamplesEqualThoseWithoutSpeculation) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));
  auto run = [&](const std::vector<std::string>& flags, std::vector<std::vector<int32_t>>* ids, int* accepted) {
    ServerProcess server({model_dir, 1, flags});
    ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
    auto stub = server.NewStub();
    for (uint64_t seed : {1u, 7u, 42u}) {
      for (float temperature : {0.3f, 0.8f}) {
        v1::GenerateRequest req = GreedyRequest(ref["cases"][seed % 2]["prompt"].get<std::string>(), 120);
        req.mutable_sampling()->set_temperature(temperature);
        req.mutable_sampling()->set_seed(seed);
        req.mutable_sampling()->set_top_p(0.95f);
        if (seed == 42) req.mutable_sampling()->set_repetition_penalty(1.1f);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        v1::GenerateResponse resp;
        grpc::Status s = stub->Generate(&ctx, req, &resp);
        ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << server.ReadLog();
        ids->emplace_back(resp.token_ids().begin(), resp.token_ids().end());
        *accepted += resp.usage().speculative().num_accepted_tokens();
      }
    }
    EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
  };
  std::vector<std::vector<int32_t>> plain;
  int plain_accepted = 0;
  run({}, &plain, &plain_accepted);
  EXPECT_EQ(plain_accepted, 0);
  // The draft's proposals are its greedy tokens (q one-hot): kept exactly when the seeded draw picks them.
  for (Proposer proposer : {Proposer::kNgram, Proposer::kSelfDraft}) {
    std::vector<std::vector<int32_t>> speculative;
    int accepted = 0;
    run(SpeculationFlags(proposer, model_dir, 4), &speculative, &accepted);
    ASSERT_EQ(plain.size(), speculative.size());
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_EQ(speculative[i], plain[i]) << ProposerName(proposer) << " request " << i;
    }
    EXPECT_GT(accepted, 0) << ProposerName(proposer) << ": no proposal was ever kept: the comparison proved nothing";
  }
}

// The flags are checked at startup with messages that name them.
TEST(SpeculativeFlagsTest, BadValuesAreRefusedNamingTheFlag) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--speculative-method=eagle"}, "--speculative-method 'eagle': expected ngram, draft"},
      {{"--speculative-method=draft"}, "--speculative-method draft needs --draft-model DIR"},
      {{"--draft-model=" + model_dir}, "--draft-model is only used with --speculative-method draft"},
      {{"--speculative-method=draft", "--draft-model=" + RandomDraftDir(600)},
       "--draft-model must share the target model's tokenizer, but its vocab_size is 600 where the target's is 512"},
      {{"--speculative-method=draft", "--draft-model=/nonexistent-draft"}, "--draft-model /nonexistent-draft"},
      {{"--speculative-method=ngram", "--num-speculative-tokens=0"}, "--num-speculative-tokens = 0"},
      {{"--speculative-method=ngram", "--ngram-min=3", "--ngram-max=2"}, "--ngram-max = 2 must be >= --ngram-min"},
      {{"--speculative-method=ngram", "--speculative-step-tokens=-1"}, "--speculative-step-tokens = -1 must be >= 0"},
  };
  for (const auto& [flags, message] : cases) {
    ServerProcess server({model_dir, 1, flags, absl::Seconds(60)});
    EXPECT_FALSE(server.Start().ok());
    EXPECT_NE(server.ReadLog().find(message), std::string::npos) << server.ReadLog();
  }
}

}  // namespace
}  // namespace tpserve::testing
