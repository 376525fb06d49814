// OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, and the HTTP status each
// absl::Status code maps to: INVALID_ARGUMENT 400, UNAUTHENTICATED 401, NOT_FOUND 404, RESOURCE_EXHAUSTED 429
// (with Retry-After), UNAVAILABLE 503 (loading, draining, worker group lost), anything else 500.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "coordinator/http/http_server.h"

namespace tpserve::coordinator::openai {

struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;   // "invalid_request_error", "authentication_error", ...
  std::string param;  // empty: JSON null
  std::string code;   // empty: JSON null
};

// `param` names the offending request field for INVALID_ARGUMENT (see openai_request.h, ToOpenAiParam).
ApiError FromStatus(const absl::Status& status, const std::string& param = "");
ApiError FromHttpStatus(int http_status, const std::string& message);  // the HTTP layer's own (404, 413, ...)

std::string ErrorJson(const ApiError& e);  // the body, without a trailing newline
http::Response ErrorResponse(const ApiError& e);

}  // namespace tpserve::coordinator::openai
