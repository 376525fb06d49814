// Sampler: every transform against hand-computed distributions, greedy tie-breaks, raw logprobs, and the
// counter-based draw's determinism (same tokens whatever else is in the batch, and after replay).
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker.pb.h"
#include "kernels/host_top_k.h"
#include "worker/sampler/sampler.h"

namespace tpserve::sampler {
namespace {

using History = Sampler::History;

std::vector<double> Normalise(std::vector<double> p) {
  double s = 0;
  for (double x : p) s += x;
  for (double& x : p) x /= s;
  return p;
}

void ExpectDist(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  // Logits are float32 (log(0.3f) is rounded), so probabilities carry ~1e-8 of input rounding.
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-7) << "id " << i;
}

std::vector<double> Dist(const SamplingParams& p, const std::vector<float>& logits,
                         const std::vector<int32_t>& history = {}, int prompt_len = 0) {
  absl::StatusOr<std::vector<double>> d = Sampler::Distribution(p, History{history, prompt_len}, logits);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : std::vector<double>{};
}

TEST(SamplerTest, GreedyIsArgmaxWithTiesToLowestId) {
  SamplingParams p;  // temperature 0
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.0f};
  absl::StatusOr<SampleResult> r = Sampler::SampleOnce(p, History{}, logits, 0.99);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->token, 1);
  ExpectDist(Dist(p, logits), {0, 1, 0, 0, 0});
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.temperature = 1.0f;
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.0f};
  // History (prompt only) holds 1 and 3: 2.0 -> 1.0, -1.0 -> -2.0.
  ExpectDist(Dist(p, logits, {1, 3, 1}, 3),
             Normalise({std::exp(1.0), std::exp(1.0), std::exp(0.5), std::exp(-2.0), std::exp(2.0)}));
  p.temperature = 0.0f;
  absl::StatusOr<SampleResult> r = Sampler::SampleOnce(p, History{std::vector<int32_t>{1, 3}, 2}, logits, 0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 4);  // greedy sees the penalised logits too
}

TEST(SamplerTest, PresenceAndFrequencyPenaliseGeneratedTokensOnly) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.0f};
  // Prompt [0]; generated [4, 4, 2]: token 4 -> 2 - 0.5 - 2*0.25 = 1.0; token 2 -> 0.5 - 0.75 = -0.25.
  ExpectDist(Dist(p, logits, {0, 4, 4, 2}, 1),
             Normalise({std::exp(1.0), std::exp(2.0), std::exp(-0.25), std::exp(-1.0), std::exp(1.0)}));
}

TEST(SamplerTest, TemperatureScalesLogits) {
  SamplingParams p;
  p.temperature = 0.5f;
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f};
  ExpectDist(Dist(p, logits), Normalise({std::exp(2.0), std::exp(4.0), std::exp(1.0), std::exp(-2.0)}));
}

TEST(SamplerTest, TopKKeepsTheKMostLikelyWithTiesToLowerIds) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  ExpectDist(Dist(p, {1.0f, 2.0f, 0.5f, -1.0f, 1.5f}), Normalise({0, std::exp(2.0), 0, 0, std::exp(1.5)}));
  // Three-way tie at the top: ids 0 and 2 survive.
  ExpectDist(Dist(p, {3.0f, 1.0f, 3.0f, 3.0f}), {0.5, 0, 0.5, 0});
}

TEST(SamplerTest, TopPKeepsTheSmallestPrefixReachingP) {
  SamplingParams p;
  p.temperature = 1.0f;
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  p.top_p = 0.7f;  // 0.5 (before: 0) and 0.3 (before: 0.5 < 0.7); 0.15 has 0.8 before it
  ExpectDist(Dist(p, logits), {0, 0.625, 0, 0.375});
  p.top_p = 0.85f;
  ExpectDist(Dist(p, logits), {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95});
  p.top_p = 0.1f;  // the first token alone
  ExpectDist(Dist(p, logits), {0, 1, 0, 0});
}

TEST(SamplerTest, TopPOrdersBeyondTheFirstCandidates) {
  // A flat distribution over 1000 ids needs more than the first partial sort.
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;
  std::vector<float> logits(1000, 0.0f);
  std::vector<double> d = Dist(p, logits);
  int kept = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    if (d[i] > 0) {
      ++kept;
      EXPECT_LT(i, 500u);  // ties -> lower ids
    }
  }
  EXPECT_EQ(kept, 500);
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheTop) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.2f;  // threshold 0.1
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  ExpectDist(Dist(p, logits), {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0});
}

TEST(SamplerTest, FiltersComposeInOrderTopKTopPMinP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 3;    // {0.4, 0.3, 0.2}  (renormalised: 4/9, 3/9, 2/9)
  p.top_p = 0.7f; // 4/9 = 0.44 < 0.7 -> keep 3/9; cum 7/9 >= 0.7 -> stop
  p.min_p = 0.8f; // 0.8 * 4/7 = 0.457 > 3/7 -> only the top survives
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.3f), std::log(0.2f)};
  ExpectDist(Dist(p, logits), {0, 1, 0, 0});
  p.min_p = 0.5f;  // 0.5 * 4/7 = 0.286 < 3/7
  ExpectDist(Dist(p, logits), {0, 4.0 / 7, 3.0 / 7, 0});
}

TEST(SamplerTest, LogprobsAreRawLogSoftmaxAndTopNIsSorted) {
  SamplingParams p;
  p.repetition_penalty = 10.0f;  // changes the choice, not the reported logprobs
  p.logprobs = 3;
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 2.0f};
  absl::StatusOr<SampleResult> r = Sampler::SampleOnce(p, History{std::vector<int32_t>{1}, 1}, logits, 0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 2);  // 3.0 / 10 = 0.3 < 2.0; tie 2 vs 3 -> 2
  const double lse = std::log(std::exp(1.0) + std::exp(3.0) + 2 * std::exp(2.0));
  EXPECT_NEAR(r->logprob, 2.0 - lse, 1e-6);
  ASSERT_EQ(r->top_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_NEAR(r->top_logprobs[0], 3.0 - lse, 1e-6);
  EXPECT_NEAR(r->top_logprobs[2], 2.0 - lse, 1e-6);
}

TEST(SamplerTest, DrawsFollowTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  const std::vector<double> want = {0.1, 0.6, 0.3};
  const std::vector<float> logits = {std::log(0.1f), std::log(0.6f), std::log(0.3f)};
  std::vector<int> counts(3, 0);
  const int n = 20000;
  for (int k = 0; k < n; ++k) {
    absl::StatusOr<SampleResult> r = Sampler::SampleOnce(p, History{}, logits, CounterUniform(7, k));
    ASSERT_TRUE(r.ok());
    ++counts[r->token];
  }
  // 4.5 sigma of a binomial at n = 20000 is < 0.016.
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(counts[i] / double(n), want[i], 0.016) << "id " << i;
}

TEST(SamplerTest, NegativeInfinityIsNeverChosen) {
  SamplingParams p;
  p.temperature = 2.0f;
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> logits = {ninf, 0.0f, ninf, 0.1f, ninf};
  for (int k = 0; k < 2000; ++k) {
    absl::StatusOr<SampleResult> r = Sampler::SampleOnce(p, History{}, logits, CounterUniform(1, k));
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->token == 1 || r->token == 3) << r->token;
  }
  absl::StatusOr<SampleResult> none = Sampler::SampleOnce(p, History{}, std::vector<float>(4, ninf), 0.5);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
}

// Logits for step k of a fixed "model": same for every run.
std::vector<float> StepLogits(uint64_t seq, int k, int vocab) {
  std::mt19937 gen(static_cast<uint32_t>(seq * 1000 + k));
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> l(vocab);
  for (float& x : l) x = n(gen);
  return l;
}

TEST(SamplerTest, SeededDrawsIgnoreTheBatchAndSurviveReplay) {
  const int vocab = 50;
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.95f;
  p.repetition_penalty = 1.1f;
  p.seed = 42;
  const std::vector<int32_t> prompt = {3, 4, 5};

  // Alone.
  Sampler alone(vocab);
  ASSERT_TRUE(alone.Start(1, p, prompt, 3, 0).ok());
  std::vector<int32_t> solo;
  for (int k = 0; k < 20; ++k) {
    absl::StatusOr<SampleResult> r = alone.Sample(1, StepLogits(1, k, vocab));
    ASSERT_TRUE(r.ok()) << r.status();
    solo.push_back(r->token);
  }
  // Different seeds must differ somewhere over 20 draws.
  {
    Sampler other(vocab);
    SamplingParams q = p;
    q.seed = 43;
    ASSERT_TRUE(other.Start(1, q, prompt, 3, 0).ok());
    std::vector<int32_t> toks;
    for (int k = 0; k < 20; ++k) toks.push_back(other.Sample(1, StepLogits(1, k, vocab))->token);
    EXPECT_NE(toks, solo);
  }

  // In a batch with two other sequences, sampled in varying order.
  Sampler batch(vocab);
  SamplingParams q = p;
  q.seed = 7;
  ASSERT_TRUE(batch.Start(9, q, {1, 2}, 2, 0).ok());
  ASSERT_TRUE(batch.Start(1, p, prompt, 3, 0).ok());
  ASSERT_TRUE(batch.Start(5, SamplingParams{}, {8}, 1, 0).ok());
  std::vector<int32_t> batched;
  for (int k = 0; k < 20; ++k) {
    if (k % 2) {
      ASSERT_TRUE(batch.Sample(9, StepLogits(9, k, vocab)).ok());
    }
    batched.push_back(batch.Sample(1, StepLogits(1, k, vocab))->token);
    ASSERT_TRUE(batch.Sample(5, StepLogits(5, k, vocab)).ok());
  }
  EXPECT_EQ(batched, solo);

  // Preempted after 10 tokens and replayed from a SequenceStart carrying the history.
  tpserve::worker::v1::SequenceStart start;
  start.set_seq_id(1);
  start.mutable_sampling()->set_temperature(p.temperature);
  start.mutable_sampling()->set_top_p(p.top_p);
  start.mutable_sampling()->set_repetition_penalty(p.repetition_penalty);
  start.mutable_sampling()->set_seed(p.seed);
  for (int32_t t : prompt) start.add_history(t);
  for (int k = 0; k < 10; ++k) start.add_history(solo[k]);
  start.set_prompt_len(3);
  start.set_num_generated(10);
  Sampler replay(vocab);
  ASSERT_TRUE(replay.Start(start).ok());
  for (int k = 10; k < 20; ++k) {
    absl::StatusOr<SampleResult> r = replay.Sample(1, StepLogits(1, k, vocab));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->token, solo[k]) << "step " << k;
  }
}

// The GPU's top-candidate path (Backend::TopK -> SampleTop) gives what Sample gives on the whole row, and the
// sequence's state moves on the same way; it is offered only where the candidates suffice.
TEST(SamplerTest, SampleTopMatchesSampleForPlainGreedy) {
  const int vocab = 300;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-5, 5);
  SamplingParams p;
  p.logprobs = 4;
  Sampler whole(vocab), top(vocab);
  ASSERT_TRUE(whole.Start(1, p, {1, 2}, 2, 0).ok());
  ASSERT_TRUE(top.Start(1, p, {1, 2}, 2, 0).ok());
  ASSERT_EQ(top.TopCandidatesNeeded(1), 4);
  for (int step = 0; step < 5; ++step) {
    std::vector<float> logits(vocab);
    for (float& x : logits) x = d(rng);
    logits[7] = logits[200] = 6.0f;  // a tie at the top: the lower id wins
    logits[9] = NAN;
    const int k = top.TopCandidatesNeeded(1);
    std::vector<int32_t> ids(k);
    std::vector<float> vals(k);
    float lse = 0;
    kernels::HostTopK(logits.data(), 1, 1, vocab, vocab, k, ids.data(), vals.data(), &lse);
    absl::StatusOr<SampleResult> a = whole.Sample(1, logits);
    absl::StatusOr<SampleResult> b = top.SampleTop(1, ids, vals, lse);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    EXPECT_EQ(b->token, 7);
    EXPECT_EQ(b->token, a->token);
    EXPECT_NEAR(b->logprob, a->logprob, 1e-5);
    EXPECT_EQ(b->top_ids, a->top_ids);
    ASSERT_EQ(b->top_logprobs.size(), a->top_logprobs.size());
    for (size_t i = 0; i < a->top_logprobs.size(); ++i) EXPECT_NEAR(b->top_logprobs[i], a->top_logprobs[i], 1e-5);
  }
  // Sampling and penalties need whole rows; unknown sequences have no candidates to use.
  SamplingParams sampled;
  sampled.temperature = 0.7f;
  SamplingParams penalised;
  penalised.repetition_penalty = 1.2f;
  ASSERT_TRUE(top.Start(2, sampled, {1}, 1, 0).ok());
  ASSERT_TRUE(top.Start(3, penalised, {1}, 1, 0).ok());
  EXPECT_EQ(top.TopCandidatesNeeded(2), 0);
  EXPECT_EQ(top.TopCandidatesNeeded(3), 0);
  EXPECT_EQ(top.TopCandidatesNeeded(99), 0);
  const std::vector<int32_t> ids = {0};
  const std::vector<float> vals = {1.0f};
  EXPECT_EQ(top.SampleTop(2, ids, vals, 1.0f).status().code(), absl::StatusCode::kFailedPrecondition);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  SamplingParams greedy;
  ASSERT_TRUE(top.Start(4, greedy, {1}, 1, 0).ok());
  absl::StatusOr<SampleResult> none = top.SampleTop(4, ids, std::vector<float>{neg_inf}, neg_inf);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("no finite entry"), std::string::npos) << none.status();
}

TEST(SamplerTest, RejectsBadInputWithUsefulErrors) {
  Sampler s(10);
  EXPECT_EQ(s.Sample(3, std::vector<float>(10, 0.0f)).status().code(), absl::StatusCode::kNotFound);
  SamplingParams p;
  p.temperature = -1.0f;
  EXPECT_EQ(s.Start(1, p, {1}, 1, 0).code(), absl::StatusCode::kInvalidArgument);
  p.temperature = 1.0f;
  EXPECT_EQ(s.Start(1, p, {10}, 1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Start(1, p, {1}, 2, 0).code(), absl::StatusCode::kInvalidArgument);
  p.logprobs = 21;
  EXPECT_EQ(s.Start(1, p, {1}, 1, 0).code(), absl::StatusCode::kInvalidArgument);
  p.logprobs = 0;
  ASSERT_TRUE(s.Start(1, p, {1}, 1, 0).ok());
  EXPECT_TRUE(s.Has(1));
  EXPECT_EQ(s.Sample(1, std::vector<float>(9, 0.0f)).status().code(), absl::StatusCode::kInvalidArgument);
  s.Finish(1);
  EXPECT_FALSE(s.Has(1));
  EXPECT_EQ(s.num_sequences(), 0u);
}

// SplitMix64's output function, written here from Vigna's splitmix64.c (the generator's state advances by the
// golden gamma before each output), checked below against that generator's published sequence.
uint64_t ReferenceSplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

TEST(SamplerTest, CounterUniformIsInRangeAndKeyed) {
  // splitmix64 seeded with 1234567 (also java.util.SplittableRandom's mixer): its first outputs.
  const uint64_t published[] = {6457827717110365317ull, 3203168211198807973ull, 9817491932198370423ull,
                                4593380528125082431ull, 16408922859458223821ull};
  uint64_t state = 1234567;
  for (uint64_t want : published) {
    EXPECT_EQ(ReferenceSplitMix64(state), want);
    state += 0x9e3779b97f4a7c15ull;
  }
  std::map<double, int> seen;
  for (uint64_t seed : {0ull, 1ull, 2ull, ~0ull}) {
    for (uint64_t k = 0; k < 100; ++k) {
      const double u = CounterUniform(seed, k);
      ASSERT_GE(u, 0.0);
      ASSERT_LT(u, 1.0);
      ++seen[u];
      // The header's contract, from the reference mixer: splitmix64 of the (seed, counter) pair, top 53 bits.
      const uint64_t h = ReferenceSplitMix64(ReferenceSplitMix64(seed) ^
                                             ReferenceSplitMix64(k ^ 0x632be59bd9b4e019ull));
      EXPECT_EQ(u, static_cast<double>(h >> 11) / 9007199254740992.0) << "seed " << seed << " k " << k;
    }
  }
  EXPECT_EQ(seen.size(), 400u);
}

}  // namespace
}  // namespace tpserve::sampler
