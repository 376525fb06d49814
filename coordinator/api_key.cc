// Implementation of coordinator/api_key.h.
#include "coordinator/api_key.h"

#include "absl/strings/str_cat.h"

namespace tpserve::coordinator {

absl::Status CheckApiKey(const std::optional<std::string>& authorization, const std::string& api_key,
                         const std::string& how_to_send) {
  if (api_key.empty()) return absl::OkStatus();
  if (!authorization.has_value()) return absl::UnauthenticatedError(absl::StrCat("missing API key: ", how_to_send));
  const std::string& got = *authorization;
  const std::string want = "Bearer " + api_key;
  unsigned char diff = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < got.size(); ++i) diff |= static_cast<unsigned char>(got[i] ^ want[i % want.size()]);
  if (diff != 0) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

}  // namespace tpserve::coordinator
