// The OpenAI HTTP API as tpserve-bench speaks it, without any transport: request bodies for streaming chat
// and text completions, what each streamed chunk means for a RequestRecord, error bodies, and /v1/models.
//
// Counting: OpenAI chunks do not say how many tokens they carry. A chunk whose first choice has non-empty text
// (completions: "text"; chat: "delta.content") counts as one token chunk: its arrival is a token time (TTFT is
// the first one, ITL the gaps between them) and it adds 1 to stream_tokens. tpserve and vLLM send one chunk per
// engine step, i.e. one token per chunk while decoding. Token totals (throughput, TPOT) come from the usage
// the server reports in its last chunk (stream_options.include_usage), as in gRPC mode.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/workload.h"

namespace tpserve::bench {

enum class OpenAiEndpoint { kChat, kCompletions };
// "chat" or "completions"; INVALID_ARGUMENT naming --endpoint otherwise.
absl::StatusOr<OpenAiEndpoint> ParseOpenAiEndpoint(const std::string& name);
// "/v1/chat/completions" or "/v1/completions".
const char* OpenAiPath(OpenAiEndpoint endpoint);

// Turns token ids into text (the served model's tokenizer), for chat requests built from token ids.
using DecodeFn = std::function<std::string(absl::Span<const int32_t> ids)>;

// The JSON body for `spec`: model, stream with stream_options.include_usage, max_tokens = output_len,
// ignore_eos when the spec asks for it (a vLLM extension tpserve also takes; other servers ignore it or refuse
// it), temperature and, when sampling, seed. Prompts: completions sends token ids as a token-id array and text as a string; chat sends
// messages, and a text or token-id prompt (decoded with `decode`, BOS dropped) as one user message.
// INVALID_ARGUMENT for a chat-messages request to the completions endpoint, or token ids to chat without
// `decode`.
absl::StatusOr<std::string> BuildOpenAiBody(const RequestSpec& spec, OpenAiEndpoint endpoint,
                                            const std::string& model, const DecodeFn& decode);

// Fills every spec's http_body (once, before a run, so serialising is not timed).
absl::Status PrepareOpenAiBodies(std::vector<RequestSpec>* specs, OpenAiEndpoint endpoint, const std::string& model,
                                 const DecodeFn& decode);

// Reads one SSE event of a streaming response into `record`, received at `t` (run seconds). Sets *done on
// "[DONE]". A chunk that is not JSON, or an {"error": {...}} chunk (vLLM reports a failure mid-stream this
// way), returns an error whose message is what the record should say; the caller ends the call with it.
absl::Status ApplyOpenAiEvent(const std::string& data, OpenAiEndpoint endpoint, double t, RequestRecord* record,
                              bool* done, int* tokens_added);

// "HTTP 429: <error.message> (type ..., code ...)" from an error response body in OpenAI's shape
// ({"error": {"message", "type", "param", "code"}}), or its first 300 bytes when it is not.
std::string DescribeOpenAiError(int http_status, absl::string_view body);

// One entry of GET /v1/models.
struct ServedModel {
  std::string id;
  int max_model_len = 0;  // vLLM's extension; 0 when the server does not say
};
// Parses a /v1/models body ({"object": "list", "data": [{"id": ...}, ...]}); INVALID_ARGUMENT when malformed.
absl::StatusOr<std::vector<ServedModel>> ParseOpenAiModels(absl::string_view body);

}  // namespace tpserve::bench
