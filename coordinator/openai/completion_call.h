// One OpenAI completion request in flight: its n engine sequences, and what goes back to the client (one JSON
// body, or Server-Sent Events: a chunk per choice per engine step, an optional usage chunk, "data: [DONE]").
//
// n > 1: choice 0 is submitted first; choices 1..n-1 are submitted when choice 0's first token arrives, i.e.
// once its prompt has been prefilled and its full KV blocks are in the prefix cache, so they read those blocks
// instead of recomputing them. Choice i samples with seed + i (one seed stream per choice).
//
// A client that goes away cancels every sequence (the engine frees their KV at the next step), as a gRPC
// cancel does. Thread-safe: the engine thread delivers deltas, a server thread reports the client gone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/engine.h"
#include "coordinator/http/http_server.h"
#include "coordinator/openai/openai_request.h"
#include "coordinator/request_state.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator::openai {

struct CallOptions {
  Endpoint endpoint = Endpoint::kChat;
  std::string id;  // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;
  std::string model;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
};

class CompletionCall : public std::enable_shared_from_this<CompletionCall> {
 public:
  CompletionCall(CallOptions options, const Tokenizer* tokenizer, Engine* engine,
                 std::shared_ptr<http::Exchange> exchange);

  // Submits choice 0 (and starts the event stream when streaming). An error (queue full, draining) is
  // returned and nothing was sent: the caller answers it.
  absl::Status Start(RequestSpec spec);

 private:
  class ChoiceSink;
  struct Choice {
    uint64_t handle = 0;
    bool submitted = false;
    bool started = false;  // its first delta arrived
    bool finished = false;
    bool role_sent = false;  // streaming chat: the first chunk carries role "assistant"
    std::string text;
    nlohmann::json logprobs;  // chat: array of token entries; completions: the parallel-arrays object
    int text_offset = 0;  // completions logprobs: offset of the next token in the choice's text
    tpserve::v1::FinishReason finish = tpserve::v1::FINISH_REASON_UNSPECIFIED;
    tpserve::v1::Usage usage;
  };

  void OnDelta(int index, const tpserve::v1::GenerateStreamResponse& d);
  void OnError(int index, const absl::Status& status);
  void OnClientGone();
  absl::Status SubmitLocked(int index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the exchange with an error: a JSON error body, or an error event + [DONE] on a started stream.
  void FailLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StreamDeltaLocked(int index, const tpserve::v1::GenerateStreamResponse& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  nlohmann::json Envelope(bool chunk) const;
  nlohmann::json UsageLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendEvent(const nlohmann::json& j);

  const CallOptions options_;
  const Tokenizer* tokenizer_;
  Engine* engine_;
  std::shared_ptr<http::Exchange> exchange_;
  absl::Mutex mu_;
  RequestSpec spec_ ABSL_GUARDED_BY(mu_);  // choice 0's; the others copy it with their own seed
  std::vector<Choice> choices_ ABSL_GUARDED_BY(mu_);
  int num_finished_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;  // the exchange was answered (or the client left)
};

}  // namespace tpserve::coordinator::openai
