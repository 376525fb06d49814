// Token sampling on rank 0: per-sequence state (sampling config, history for penalties, RNG counter) and
// the logits -> token transform chain.
//
// Order of transforms (vLLM / HF order):
//   repetition_penalty (HF: over every token in history, prompt included: positive logits are divided,
//   negative multiplied) -> presence / frequency penalties (OpenAI: over generated tokens only) ->
//   [temperature == 0: argmax, ties -> lowest id] -> temperature -> top_k -> top_p -> min_p -> draw.
// The draw uses a counter-based RNG keyed by (seed, num_generated): the k-th generated token of a request
// uses the same uniform number whatever else is in the batch, and again after preemption / replay (the
// coordinator resends SequenceStart with history and num_generated).
//
// Logprobs are of the RAW model distribution (log-softmax of the logits before penalties, temperature
// and truncation), as vLLM V1 returns by default ("raw_logprobs"): they describe the model, not the
// sampling settings, and stay comparable across requests.
//
// Thread-compatible: one step at a time (the worker's step loop).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/sampling_limits.h"  // kMaxLogprobs

namespace tpserve::worker::v1 {
class SamplingConfig;
class SequenceStart;
}  // namespace tpserve::worker::v1

namespace tpserve::sampler {

// Mirrors worker.proto's SamplingConfig. Zero values of the proto mean "off" where noted.
struct SamplingParams {
  float temperature = 0.0f;         // 0 => greedy; must be >= 0
  int top_k = 0;                    // <= 0 => off
  float top_p = 1.0f;               // <= 0 or >= 1 => off
  float min_p = 0.0f;               // in [0, 1]; 0 => off
  float repetition_penalty = 1.0f;  // 0 (proto default) or 1 => off; else must be > 0
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  int logprobs = 0;                 // top-N logprobs to return, in [0, kMaxLogprobs]
};

SamplingParams SamplingParamsFromProto(const tpserve::worker::v1::SamplingConfig& config);

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;               // raw log-softmax of the chosen token
  std::vector<int32_t> top_ids;       // params.logprobs most likely ids (raw), descending, ties -> lower id
  std::vector<float> top_logprobs;
};

// The uniform [0, 1) number the k-th generated token of a request with `seed` draws with
// (splitmix64 of the pair; 53-bit mantissa).
double CounterUniform(uint64_t seed, uint64_t counter);

class Sampler {
 public:
  explicit Sampler(int vocab_size) : vocab_size_(vocab_size) {}

  // Creates or resets the state of `seq_id`. history = prompt + generated tokens so far;
  // tokens [prompt_len, history.size()) are the generated ones; num_generated is the RNG counter base.
  // INVALID_ARGUMENT naming the field for bad params or token ids outside [0, vocab).
  absl::Status Start(uint64_t seq_id, const SamplingParams& params, std::vector<int32_t> history,
                     int prompt_len, int num_generated);
  absl::Status Start(const tpserve::worker::v1::SequenceStart& start);
  void Finish(uint64_t seq_id);  // no-op when unknown
  bool Has(uint64_t seq_id) const { return seqs_.contains(seq_id); }
  size_t num_sequences() const { return seqs_.size(); }
  // The sequence's history (prompt + generated, every token sampled so far included); empty when unknown.
  // Valid until the next non-const call.
  absl::Span<const int32_t> TokenHistory(uint64_t seq_id) const {
    auto it = seqs_.find(seq_id);
    return it == seqs_.end() ? absl::Span<const int32_t>() : absl::MakeConstSpan(it->second.history);
  }

  // logits: [vocab] for the sequence's next token (-inf entries are never chosen). Appends the chosen
  // token to the sequence's history and advances its counter. NOT_FOUND for an unknown seq_id;
  // INVALID_ARGUMENT for a wrong length or logits with no finite entry.
  absl::StatusOr<SampleResult> Sample(uint64_t seq_id, absl::Span<const float> logits);

  // How many of the most likely raw candidates the next token of `seq_id` needs, when they are all it needs:
  // max(1, logprobs) for greedy decoding without penalties (the argmax and the top logprobs), 0 when it needs
  // the whole logits row (sampling, penalties) or the sequence is unknown. Lets the worker ask the model for
  // top candidates computed on the GPU instead of whole rows (LlamaModel StepInput::top_k).
  int TopCandidatesNeeded(uint64_t seq_id) const;
  // Sample() for a sequence with TopCandidatesNeeded() > 0, from Backend::TopK's output for its row: ids and
  // their raw logits, descending (ties -> lower id), at least TopCandidatesNeeded() of them, and the row's
  // log-sum-exp. Same result and state change as Sample() on the full row (logprobs to float rounding).
  absl::StatusOr<SampleResult> SampleTop(uint64_t seq_id, absl::Span<const int32_t> ids,
                                         absl::Span<const float> logits, float lse);

  // The pure transform, for tests and tools: chooses a token without touching any state.
  // `uniform` is the draw in [0, 1) (unused when greedy).
  struct History {
    absl::Span<const int32_t> tokens;  // prompt + generated
    int prompt_len = 0;
  };
  static absl::StatusOr<SampleResult> SampleOnce(const SamplingParams& params, const History& history,
                                                 absl::Span<const float> logits, double uniform);
  // The sampling distribution after every transform (zero where filtered), float64, [vocab]. Greedy
  // gives a one-hot vector. For tests: compare with hand-computed distributions.
  static absl::StatusOr<std::vector<double>> Distribution(const SamplingParams& params,
                                                          const History& history,
                                                          absl::Span<const float> logits);

 private:
  struct SeqState {
    SamplingParams params;
    std::vector<int32_t> history;
    int prompt_len = 0;
    int num_generated = 0;
  };

  const int vocab_size_;
  absl::flat_hash_map<uint64_t, SeqState> seqs_;
};

// Not a request validator: the one set of sampling rules users meet is the coordinator's
// (coordinator/validation.cc: e.g. top_p in (0, 1], repetition_penalty > 0, logprobs <= kMaxLogprobs). This
// refuses only what would make the transforms above compute garbage or overrun a buffer (NaN / infinite
// values, a negative temperature, min_p outside [0, 1], a logprobs count outside [0, kMaxLogprobs]); the proto's
// zero values keep their "off" meaning so a SequenceStart that leaves a field unset is well defined.
absl::Status CheckSamplingInvariants(const SamplingParams& params);

}  // namespace tpserve::sampler
