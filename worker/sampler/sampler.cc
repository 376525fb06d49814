// Logits -> token: penalties, temperature, top-k / top-p / min-p, counter-based draw (see sampler.h).
#include "worker/sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "worker.pb.h"

namespace tpserve::sampler {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

bool RepetitionActive(const SamplingParams& p) {
  return p.repetition_penalty > 0.0f && p.repetition_penalty != 1.0f;
}
bool TopPActive(const SamplingParams& p) { return p.top_p > 0.0f && p.top_p < 1.0f; }

// Higher value first, then lower id: the one order every tie-break in this file uses.
struct ByValueDesc {
  const double* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

// Penalised logits (float64, NaN -> -inf). Fails when nothing finite is left.
absl::StatusOr<std::vector<double>> PenalisedLogits(const SamplingParams& params,
                                                    const Sampler::History& history,
                                                    absl::Span<const float> logits) {
  std::vector<double> l(logits.size());
  bool any_finite = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    l[i] = std::isnan(x) ? kNegInf : static_cast<double>(x);
    any_finite |= std::isfinite(x) || x == std::numeric_limits<float>::infinity();
  }
  if (!any_finite) {
    return absl::InvalidArgumentError("logits have no finite entry (all -inf or NaN)");
  }
  const int64_t vocab = static_cast<int64_t>(l.size());
  if (RepetitionActive(params)) {
    const double p = params.repetition_penalty;
    absl::flat_hash_set<int32_t> seen(history.tokens.begin(), history.tokens.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= vocab || !std::isfinite(l[t])) continue;
      l[t] = l[t] > 0 ? l[t] / p : l[t] * p;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    absl::flat_hash_map<int32_t, int> counts;
    const size_t first = std::min(history.tokens.size(), static_cast<size_t>(std::max(0, history.prompt_len)));
    for (size_t i = first; i < history.tokens.size(); ++i) ++counts[history.tokens[i]];
    for (const auto& [t, n] : counts) {
      if (t < 0 || t >= vocab || !std::isfinite(l[t])) continue;
      l[t] -= static_cast<double>(params.frequency_penalty) * n + static_cast<double>(params.presence_penalty);
    }
  }
  return l;
}

int32_t ArgMax(const std::vector<double>& l) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(l.size()); ++i) {
    if (l[i] > l[best]) best = i;  // strict: ties keep the lowest id
  }
  return best;
}

// Fills logprob and the top-N raw logprobs.
void AddLogprobs(absl::Span<const float> logits, int n, SampleResult& r) {
  std::vector<double> raw(logits.size());
  double mx = kNegInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    raw[i] = std::isnan(logits[i]) ? kNegInf : logits[i];
    mx = std::max(mx, raw[i]);
  }
  double sum = 0;
  for (double x : raw) sum += std::exp(x - mx);
  const double lse = mx + std::log(sum);
  r.logprob = static_cast<float>(raw[r.token] - lse);
  n = std::min<int>(n, static_cast<int>(raw.size()));
  if (n <= 0) return;
  std::vector<int32_t> idx(raw.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), ByValueDesc{raw.data()});
  for (int i = 0; i < n; ++i) {
    r.top_ids.push_back(idx[i]);
    r.top_logprobs.push_back(static_cast<float>(raw[idx[i]] - lse));
  }
}

}  // namespace

SamplingParams SamplingParamsFromProto(const tpserve::worker::v1::SamplingConfig& c) {
  SamplingParams p;
  p.temperature = c.temperature();
  p.top_k = c.top_k();
  p.top_p = c.top_p();
  p.min_p = c.min_p();
  p.repetition_penalty = c.repetition_penalty();
  p.presence_penalty = c.presence_penalty();
  p.frequency_penalty = c.frequency_penalty();
  p.seed = c.seed();
  p.logprobs = c.logprobs();
  return p;
}

double CounterUniform(uint64_t seed, uint64_t counter) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ SplitMix64(counter ^ 0x632be59bd9b4e019ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

absl::Status CheckSamplingInvariants(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", p.temperature));
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (std::isnan(p.top_p)) return absl::InvalidArgumentError("top_p is NaN");
  if (!(p.repetition_penalty >= 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be > 0 (0 = off), got ", p.repetition_penalty));
  }
  if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty)) {
    return absl::InvalidArgumentError("presence_penalty and frequency_penalty must be finite");
  }
  if (p.logprobs < 0 || p.logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be in [0, ", kMaxLogprobs, "], got ", p.logprobs));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> Sampler::Distribution(const SamplingParams& params,
                                                          const History& history,
                                                          absl::Span<const float> logits) {
  absl::StatusOr<std::vector<double>> pen = PenalisedLogits(params, history, logits);
  if (!pen.ok()) return pen.status();
  std::vector<double>& l = *pen;
  const int32_t vocab = static_cast<int32_t>(l.size());
  std::vector<double> probs(vocab, 0.0);
  if (params.temperature == 0.0f) {
    probs[ArgMax(l)] = 1.0;
    return probs;
  }
  const double inv_t = 1.0 / params.temperature;
  double mx = l[ArgMax(l)];
  if (std::isinf(mx)) {  // +inf logits: they share all the mass
    for (int32_t i = 0; i < vocab; ++i) probs[i] = l[i] == mx ? 1.0 : 0.0;
  } else {
    for (int32_t i = 0; i < vocab; ++i) probs[i] = std::exp((l[i] - mx) * inv_t);
  }

  // Candidates ordered by probability (descending, ties -> lower id); only as deep as the filters need.
  const bool top_k_on = params.top_k > 0 && params.top_k < vocab;
  const bool top_p_on = TopPActive(params);
  if (top_k_on || top_p_on) {
    std::vector<int32_t> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    ByValueDesc order{probs.data()};
    int32_t depth = top_k_on ? params.top_k : std::min<int32_t>(vocab, 256);
    std::partial_sort(idx.begin(), idx.begin() + depth, idx.end(), order);
    if (top_p_on) {
      double total = 0;
      for (int32_t i = 0; i < (top_k_on ? depth : vocab); ++i) total += probs[top_k_on ? idx[i] : i];
      // Keep a token while the mass strictly before it is below top_p (always keeps the first).
      const double target = params.top_p * total;
      double cum = 0;
      int32_t keep = 0;
      while (true) {
        if (keep == depth) {
          if (top_k_on || depth == vocab) break;
          depth = vocab;  // the first 256 were not enough: order the rest too
          std::sort(idx.begin() + keep, idx.end(), order);
        }
        if (keep > 0 && cum >= target) break;
        cum += probs[idx[keep]];
        ++keep;
      }
      depth = keep;
    }
    std::vector<double> kept(vocab, 0.0);
    for (int32_t i = 0; i < depth; ++i) kept[idx[i]] = probs[idx[i]];
    probs.swap(kept);
  }
  if (params.min_p > 0.0f) {
    double pmax = 0;
    for (double p : probs) pmax = std::max(pmax, p);
    const double threshold = params.min_p * pmax;
    for (double& p : probs) {
      if (p < threshold) p = 0;
    }
  }
  double sum = 0;
  for (double p : probs) sum += p;
  for (double& p : probs) p /= sum;
  return probs;
}

absl::StatusOr<SampleResult> Sampler::SampleOnce(const SamplingParams& params, const History& history,
                                                 absl::Span<const float> logits, double uniform) {
  if (logits.empty()) return absl::InvalidArgumentError("logits are empty");
  SampleResult r;
  if (params.temperature == 0.0f) {
    absl::StatusOr<std::vector<double>> pen = PenalisedLogits(params, history, logits);
    if (!pen.ok()) return pen.status();
    r.token = ArgMax(*pen);
  } else {
    absl::StatusOr<std::vector<double>> dist = Distribution(params, history, logits);
    if (!dist.ok()) return dist.status();
    // Inverse CDF in id order, so the result depends only on the distribution and `uniform`.
    double cum = 0;
    int32_t last_nonzero = -1;
    for (int32_t i = 0; i < static_cast<int32_t>(dist->size()); ++i) {
      const double p = (*dist)[i];
      if (p <= 0) continue;
      last_nonzero = i;
      cum += p;
      if (uniform < cum) {
        r.token = i;
        break;
      }
    }
    if (r.token < 0) r.token = last_nonzero;  // rounding left cum a hair below 1
  }
  AddLogprobs(logits, params.logprobs, r);
  return r;
}

absl::Status Sampler::Start(uint64_t seq_id, const SamplingParams& params, std::vector<int32_t> history,
                            int prompt_len, int num_generated) {
  if (absl::Status s = CheckSamplingInvariants(params); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": ", s.message()));
  }
  for (size_t i = 0; i < history.size(); ++i) {
    if (history[i] < 0 || history[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": history[", i, "] = ",
                                                     history[i], " is outside the vocab [0, ",
                                                     vocab_size_, ")"));
    }
  }
  if (prompt_len < 0 || static_cast<size_t>(prompt_len) > history.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": prompt_len ", prompt_len,
                                                   " is outside [0, history size ", history.size(), "]"));
  }
  if (num_generated < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq_id, ": num_generated ", num_generated, " is negative"));
  }
  SeqState& st = seqs_[seq_id];
  st.params = params;
  st.history = std::move(history);
  st.prompt_len = prompt_len;
  st.num_generated = num_generated;
  return absl::OkStatus();
}

absl::Status Sampler::Start(const tpserve::worker::v1::SequenceStart& start) {
  return Start(start.seq_id(), SamplingParamsFromProto(start.sampling()),
               std::vector<int32_t>(start.history().begin(), start.history().end()), start.prompt_len(),
               start.num_generated());
}

void Sampler::Finish(uint64_t seq_id) { seqs_.erase(seq_id); }

absl::StatusOr<SampleResult> Sampler::Sample(uint64_t seq_id, absl::Span<const float> logits) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " has no sampler state (no SequenceStart)"));
  }
  if (static_cast<int64_t>(logits.size()) != vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": logits have ", logits.size(),
                                                   " entries, the vocab has ", vocab_size_));
  }
  SeqState& st = it->second;
  const double u = CounterUniform(st.params.seed, static_cast<uint64_t>(st.num_generated));
  absl::StatusOr<SampleResult> r = SampleOnce(st.params, History{st.history, st.prompt_len}, logits, u);
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("sequence ", seq_id, ": ", r.status().message()));
  }
  st.history.push_back(r->token);
  ++st.num_generated;
  return r;
}

int Sampler::TopCandidatesNeeded(uint64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return 0;
  const SamplingParams& p = it->second.params;
  const bool plain_greedy = p.temperature == 0.0f && !RepetitionActive(p) && p.presence_penalty == 0.0f &&
                            p.frequency_penalty == 0.0f;
  return plain_greedy ? std::max(1, p.logprobs) : 0;
}

absl::StatusOr<SampleResult> Sampler::SampleTop(uint64_t seq_id, absl::Span<const int32_t> ids,
                                                absl::Span<const float> logits, float lse) {
  const int need = TopCandidatesNeeded(seq_id);
  if (need == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq_id, " is unknown or needs whole logits rows (sampling or penalties), not top candidates"));
  }
  if (static_cast<int>(ids.size()) < need || logits.size() != ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": ", ids.size(), " ids and ", logits.size(),
                                                   " logits for ", need, " top candidates"));
  }
  if (!(logits[0] > -std::numeric_limits<float>::infinity()) || std::isnan(lse)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq_id, ": logits have no finite entry (all -inf or NaN)"));
  }
  SeqState& st = seqs_.find(seq_id)->second;
  SampleResult r;
  r.token = ids[0];
  r.logprob = logits[0] - lse;
  for (int i = 0; i < st.params.logprobs; ++i) {
    r.top_ids.push_back(ids[i]);
    r.top_logprobs.push_back(logits[i] - lse);
  }
  st.history.push_back(r.token);
  ++st.num_generated;
  return r;
}

}  // namespace tpserve::sampler
