// Implementation of coordinator/openai/openai_service.h.
#include "coordinator/openai/openai_service.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "coordinator/api_key.h"
#include "coordinator/openai/completion_call.h"
#include "coordinator/openai/openai_error.h"
#include "coordinator/openai/openai_format.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator::openai {

using json = nlohmann::json;

namespace {

std::string RandomId(const char* prefix) {
  static thread_local std::mt19937_64 gen(std::random_device{}());
  return absl::StrFormat("%s%016x%08x", prefix, gen(), static_cast<uint32_t>(gen()));
}

const char kHowToSendKey[] = "send the header 'Authorization: Bearer <key>'";

}  // namespace

OpenAiService::OpenAiService(OpenAiServiceOptions options, const Tokenizer* tokenizer)
    : options_(std::move(options)), tokenizer_(tokenizer), created_(absl::ToUnixSeconds(absl::Now())) {}

void OpenAiService::Register(http::Server* server) {
  server->SetErrorFormatter([](int status, const std::string& message) {
    return ErrorResponse(FromHttpStatus(status, message));
  });
  server->Handle("GET", "/v1/models", [this](const http::Request& r, std::shared_ptr<http::Exchange> x) {
    Models(r, x);
  });
  server->Handle("GET", "/v1/models/" + options_.model_name,
                 [this](const http::Request& r, std::shared_ptr<http::Exchange> x) { Models(r, x); });
  server->Handle("POST", "/v1/chat/completions", [this](const http::Request& r, std::shared_ptr<http::Exchange> x) {
    Complete(Endpoint::kChat, r, x);
  });
  server->Handle("POST", "/v1/completions", [this](const http::Request& r, std::shared_ptr<http::Exchange> x) {
    Complete(Endpoint::kCompletions, r, x);
  });
}

void OpenAiService::Models(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const {
  if (absl::Status s = CheckApiKey(request.Header("authorization"), options_.api_key, kHowToSendKey); !s.ok()) {
    return exchange->Reply(ErrorResponse(FromStatus(s)));
  }
  json model = {{"id", options_.model_name},
                {"object", "model"},
                {"created", created_},
                {"owned_by", "tpserve"},
                {"max_model_len", options_.limits.max_model_len}};
  json body = request.path == "/v1/models" ? json{{"object", "list"}, {"data", json::array({model})}} : model;
  exchange->Reply(http::Response{200, "application/json", Dump(body), {}});
}

void OpenAiService::Complete(Endpoint endpoint, const http::Request& request,
                             const std::shared_ptr<http::Exchange>& exchange) {
  auto fail = [&](const absl::Status& s, const std::string& param = "") {
    exchange->Reply(ErrorResponse(FromStatus(s, param)));
  };
  if (absl::Status s = CheckApiKey(request.Header("authorization"), options_.api_key, kHowToSendKey); !s.ok()) {
    return fail(s);
  }
  Engine* engine = engine_.load();
  if (engine == nullptr) return fail(absl::UnavailableError("model is loading; retry when /ready answers 200"));
  auto parsed = ParseOpenAiRequest(request.body, endpoint);
  if (!parsed.ok()) {
    OpenAiRequest bare;
    bare.endpoint = endpoint;
    ParamError p = ToOpenAiParam(parsed.status().message(), bare);
    return fail(absl::InvalidArgumentError(p.message), p.param);
  }
  OpenAiRequest& r = *parsed;
  if (!r.model.empty() && r.model != options_.model_name) {
    return fail(absl::NotFoundError(absl::StrCat("the model '", r.model, "' does not exist; this server serves '",
                                                 options_.model_name, "' (GET /v1/models)")),
                "model");
  }
  // Without max_tokens: OpenAI's default of 16 for completions; for chat the rest of the context (as vLLM).
  const bool max_tokens_set = r.generate.stopping().max_new_tokens() > 0;
  if (!max_tokens_set) r.generate.mutable_stopping()->set_max_new_tokens(1);
  auto spec = ValidateGenerateRequest(r.generate, *tokenizer_, options_.limits);
  if (!spec.ok()) {
    if (spec.status().code() != absl::StatusCode::kInvalidArgument) return fail(spec.status());
    ParamError p = ToOpenAiParam(spec.status().message(), r);
    return fail(absl::InvalidArgumentError(p.message), p.param);
  }
  if (!max_tokens_set) {
    int room = options_.limits.max_model_len - static_cast<int>(spec->prompt_ids.size());
    if (options_.limits.max_new_tokens > 0) room = std::min(room, options_.limits.max_new_tokens);
    spec->max_new_tokens = std::max(1, endpoint == Endpoint::kCompletions ? std::min(16, room) : room);
  }
  CallOptions call;
  call.endpoint = endpoint;
  call.id = RandomId(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-");
  call.created = absl::ToUnixSeconds(absl::Now());
  call.model = options_.model_name;
  call.n = r.n;
  call.stream = r.stream;
  call.include_usage = r.include_usage;
  call.logprobs = r.logprobs;
  call.top_logprobs = r.top_logprobs;
  spec->request_id = call.id;
  auto c = std::make_shared<CompletionCall>(std::move(call), tokenizer_, engine, exchange);
  if (absl::Status s = c->Start(std::move(*spec)); !s.ok()) return fail(s);
}

}  // namespace tpserve::coordinator::openai
