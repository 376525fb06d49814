// Implementation of coordinator/openai/openai_error.h.
#include "coordinator/openai/openai_error.h"

#include "nlohmann/json.hpp"

namespace tpserve::coordinator::openai {

ApiError FromStatus(const absl::Status& status, const std::string& param) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      e = {400, e.message, "invalid_request_error", param, ""};
      break;
    case absl::StatusCode::kUnauthenticated:
      e = {401, e.message, "authentication_error", "", "invalid_api_key"};
      break;
    case absl::StatusCode::kNotFound:
      e = {404, e.message, "invalid_request_error", param, "model_not_found"};
      break;
    case absl::StatusCode::kResourceExhausted:
      e = {429, e.message, "rate_limit_error", "", "queue_full"};
      break;
    case absl::StatusCode::kUnavailable:
      e = {503, e.message, "service_unavailable", "", "service_unavailable"};
      break;
    case absl::StatusCode::kCancelled:
      e = {503, e.message, "service_unavailable", "", "cancelled"};
      break;
    default:
      e = {500, e.message, "internal_error", "", ""};
  }
  return e;
}

ApiError FromHttpStatus(int http_status, const std::string& message) {
  ApiError e{http_status, message, "invalid_request_error", "", ""};
  if (http_status == 404) e.code = "not_found";
  if (http_status == 405) e.code = "method_not_allowed";
  if (http_status == 413) e.code = "request_too_large";
  if (http_status >= 500) e.type = "internal_error";
  return e;
}

std::string ErrorJson(const ApiError& e) {
  nlohmann::json j = {{"error",
                       {{"message", e.message},
                        {"type", e.type},
                        {"param", e.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.param)},
                        {"code", e.code.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.code)}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

http::Response ErrorResponse(const ApiError& e) {
  http::Response r{e.http_status, "application/json", ErrorJson(e) + "\n", {}};
  // The engine's queue drains within a few steps: tell well-behaved clients (the OpenAI SDKs honour it)
  // to come back shortly rather than at once.
  if (e.http_status == 429 || e.http_status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

}  // namespace tpserve::coordinator::openai
