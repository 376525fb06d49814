// One request's output side in the engine: incremental detokenization, stop conditions (EOS, stop token
// ids, stop strings matched across token boundaries and never emitted, max_new_tokens, context length),
// usage and timing. Owned and used only by the engine thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "coordinator/tokenizer/detokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "generation.pb.h"
#include "worker.pb.h"

namespace tpserve::coordinator {

// A validated request, ready for the engine.
struct RequestSpec {
  std::string request_id;
  std::vector<int32_t> prompt_ids;
  tpserve::worker::v1::SamplingConfig sampling;
  int max_new_tokens = 16;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;
  int priority = 0;
  bool no_speculation = false;  // GenerateRequest.no_speculation
  absl::Time arrival = absl::Now();
  bool internal = false;  // server-made (warm-up): kept out of metrics and request logs
};

// Receives a request's output. Called on the engine thread: implementations must not block.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  // One message per step with new tokens; the last one carries finish_reason and usage.
  virtual void OnDelta(const tpserve::v1::GenerateStreamResponse& delta) = 0;
  // The request ended without a result (worker group lost past the recovery timeout, drain timeout, internal
  // error). `last`, when the request had been admitted, is the final message a stream sends before the status:
  // finish_reason FINISH_REASON_ERROR, the text and ids generated but not yet delivered, usage. nullptr when
  // the request was refused before it started.
  virtual void OnError(const absl::Status& status, const tpserve::v1::GenerateStreamResponse* last) = 0;
};

class RequestState {
 public:
  // The context length is not a stop rule here: the scheduler admits no request whose prompt + max_new_tokens
  // exceeds max_model_len (its one owner at run time), so max_new_tokens always ends a request first.
  RequestState(uint64_t seq_id, RequestSpec spec, std::shared_ptr<RequestSink> sink, const Tokenizer& tokenizer);

  uint64_t seq_id() const { return seq_id_; }
  const RequestSpec& spec() const { return spec_; }
  RequestSink& sink() { return *sink_; }
  // Generated tokens delivered so far. The token history itself is the scheduler's Sequence::history (one
  // owner); it can run ahead of this by tokens a verify step accepted after the request stopped.
  int num_generated() const { return num_generated_; }

  // Appends one sampled token and fills `delta` (token ids, text delta, logprobs). Returns the finish
  // reason, or FINISH_REASON_UNSPECIFIED while the request continues. On finish, `delta` also carries
  // finish_reason and usage.
  tpserve::v1::FinishReason OnToken(const tpserve::worker::v1::SampledToken& token,
                                    tpserve::v1::GenerateStreamResponse* delta);
  // Ends the request now (cancel): fills the final message.
  // Ends the request with `reason` and fills the last message. FINISH_REASON_ERROR also releases the text held
  // back for a stop string or an incomplete UTF-8 sequence, so the client gets everything generated.
  void Finish(tpserve::v1::FinishReason reason, tpserve::v1::GenerateStreamResponse* delta);

  // Timing (for metrics and the per-request log line).
  absl::Time first_scheduled;  // InfinitePast until scheduled
  absl::Time first_token;
  absl::Time last_token;
  int cached_prompt_tokens = 0;
  bool cancelled = false;
  tpserve::v1::SpeculativeUsage speculative;  // usage.speculative, sent when num_drafts > 0

 private:
  void FillUsage(tpserve::v1::GenerateStreamResponse* delta) const;
  // Moves text that can no longer be part of a stop string from pending_ into `out`.
  // Returns true when a stop string matched (pending_ is truncated before it).
  bool ReleaseText(std::string* out);

  uint64_t seq_id_;
  RequestSpec spec_;
  std::shared_ptr<RequestSink> sink_;
  const Tokenizer& tokenizer_;
  IncrementalDetokenizer detok_;
  int num_generated_ = 0;
  std::string pending_;  // detokenized text held back because it may begin a stop string
  bool finished_ = false;
};

const char* FinishReasonName(tpserve::v1::FinishReason r);  // "length", "eos", "stop", ...

}  // namespace tpserve::coordinator
