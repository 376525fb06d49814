// The OpenAI-compatible HTTP API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models. Requests
// reach the engine the way gRPC requests do: the API key check (api_key.h), the public validator
// (validation.h), Engine::Submit; only the JSON in and out is OpenAI's (openai_request.h, completion_call.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "coordinator/engine.h"
#include "coordinator/http/http_server.h"
#include "coordinator/openai/openai_request.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/validation.h"

namespace tpserve::coordinator::openai {

struct OpenAiServiceOptions {
  std::string model_name;  // the only model /v1/models lists and requests may name
  std::string api_key;     // non-empty: every /v1 request needs "Authorization: Bearer <api_key>"
  ValidationLimits limits;
};

class OpenAiService {
 public:
  OpenAiService(OpenAiServiceOptions options, const Tokenizer* tokenizer);

  // Adds the routes and OpenAI-shaped errors for the server's own refusals (404, 413, ...). Before Start.
  void Register(http::Server* server);
  // Until the engine is set (the worker group is loaded) requests get 503.
  void SetEngine(Engine* engine) { engine_ = engine; }

 private:
  void Models(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const;
  void Complete(Endpoint endpoint, const http::Request& request, const std::shared_ptr<http::Exchange>& exchange);

  const OpenAiServiceOptions options_;
  const Tokenizer* tokenizer_;
  const int64_t created_;  // server start, seconds since the epoch: /v1/models' "created"
  std::atomic<Engine*> engine_{nullptr};
};

}  // namespace tpserve::coordinator::openai
