// Builds the requests a benchmark sends: synthetic prompts cut from real corpus text (token-exact, via the
// served model's tokenizer, see prompt_tokenizer.h), JSONL datasets, and shared-prefix workloads; plus request arrival schedules.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "generation.grpc.pb.h"

namespace tpserve::bench {

class PromptTokenizer;

enum class LenDist { kFixed, kUniform, kNormal };
absl::StatusOr<LenDist> ParseLenDist(const std::string& name);

// How lengths are drawn around a mean: fixed; uniform in [mean*(1-range), mean*(1+range)];
// normal with standard deviation `std_tokens` (0 = mean/4). Always clipped to [1, max].
struct LenSpec {
  int mean = 128;
  LenDist dist = LenDist::kFixed;
  double range = 0.0;
  double std_tokens = 0.0;
};
int DrawLen(const LenSpec& spec, int max, std::mt19937_64* rng);

// --dataset grounded: the built-in workload of answers that copy spans of their input (grounded_workload.h).
inline constexpr char kGroundedDataset[] = "grounded";

struct WorkloadOptions {
  // Synthetic: prompts of `input` tokens (BOS included) cut from `corpus_dir`/*.txt.
  LenSpec input;
  LenSpec output;
  std::string corpus_dir;
  // Non-empty: one request per line, {"prompt": "..."} or {"messages": [{"role","content"}...]}, optional
  // "output_len" (else drawn from `output`). Lines are reused round-robin when more requests are asked for.
  // kGroundedDataset: the built-in grounded workload (grounded_workload.h), documents of about `input` tokens
  // cut from `corpus_dir`.
  std::string dataset;
  // > 0: every prompt starts with one of `num_prefixes` shared prefixes of `prefix_len` tokens (after BOS).
  int prefix_len = 0;
  int num_prefixes = 1;
  int max_context = 0;  // overrides the tokenizer's max_context(); input + output must stay under it
  float temperature = 0.0f;
  bool ignore_eos = true;  // generate exactly the output length (false: EOS may end a request early)
  uint64_t seed = 0;
};

// One request to send: the proto itself, ready to go (the OpenAI client sends `http_body`, made from it).
struct RequestSpec {
  v1::GenerateRequest request;
  std::string http_body;       // OpenAI API only: the JSON body (PrepareOpenAiBodies), built before the run
  int expected_input_len = 0;  // -1 when the server decides (text/chat dataset inputs)
  int output_len = 0;
  int prefix_id = -1;          // which shared prefix, -1 for none
};

// Builds `count` requests, tokenizing with `tokenizer`. It may be null for a dataset only (then prompt lengths
// are unknown and left to the server). INVALID_ARGUMENT names the flag or file at fault (a missing corpus, a
// malformed dataset line, lengths that do not fit the context).
absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& options, int count,
                                                       PromptTokenizer* tokenizer);

enum class Arrival { kPoisson, kConstant };
absl::StatusOr<Arrival> ParseArrival(const std::string& name);

// Inter-arrival gaps in seconds for `count` requests at `rate` req/s. Poisson arrivals use gamma-distributed
// gaps with shape `burstiness` and mean 1/rate (vLLM semantics: 1.0 = Poisson, < 1 burstier, > 1 smoother).
std::vector<double> ArrivalGaps(Arrival arrival, double rate, double burstiness, int count, uint64_t seed);

}  // namespace tpserve::bench
