// An OpenAI /v1/chat/completions or /v1/completions JSON body turned into the public GenerateRequest that the
// gRPC API takes, so both APIs share one validator (coordinator/validation.h) and one engine path. This file
// owns only what is OpenAI's: JSON types, field names, n, streaming options, and translating a validation
// error's field back to the OpenAI parameter a client sent.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "generation.pb.h"

namespace tpserve::coordinator::openai {

enum class Endpoint { kChat, kCompletions };

inline constexpr int kMaxChoices = 16;  // largest accepted n

struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;  // as sent; empty when absent (then the served model)
  // Input, sampling, stopping, logprobs and priority, as the gRPC API would receive them. When the client
  // set no max_tokens, stopping.max_new_tokens is 0 and the caller fills in the default.
  tpserve::v1::GenerateRequest generate;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // report per-token logprobs
  int top_logprobs = 0;        // alternatives per token to report (generate.logprobs() may be larger: >= 1)
  std::string max_tokens_param = "max_tokens";  // the name the client used, for error messages
};

// Parses a request body. INVALID_ARGUMENT whose message starts with "<param>: " for malformed JSON (param
// "body"), invalid UTF-8, a field of the wrong type or out of its OpenAI range, or an unsupported form.
// Fields it does not know are ignored, as OpenAI's SDKs may send newer ones.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(absl::string_view body, Endpoint endpoint);

// The OpenAI parameter named by an INVALID_ARGUMENT from ParseOpenAiRequest or ValidateGenerateRequest
// ("sampling.top_p: ..." -> "top_p"), and the message rewritten to start with it. param is empty when the
// message names no field.
struct ParamError {
  std::string param;
  std::string message;
};
ParamError ToOpenAiParam(absl::string_view message, const OpenAiRequest& request);

}  // namespace tpserve::coordinator::openai
