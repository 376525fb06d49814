// The API key check both public APIs share (gRPC metadata and the HTTP header are both
// "authorization: Bearer <key>"), so they cannot disagree on what a valid key is.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"

namespace tpserve::coordinator {

// OK when `api_key` is empty (no key configured) or `authorization` is exactly "Bearer <api_key>", compared in
// constant time (the time taken does not reveal how much of the key matched). Otherwise UNAUTHENTICATED;
// `how_to_send` finishes the message for a missing key, e.g. "send metadata 'authorization: Bearer <key>'".
absl::Status CheckApiKey(const std::optional<std::string>& authorization, const std::string& api_key,
                         const std::string& how_to_send);

}  // namespace tpserve::coordinator
