// Turns a public GenerateRequest into a RequestSpec, or INVALID_ARGUMENT naming the offending field with a
// message a person can act on. Applies the chat template and tokenizes.
#pragma once

#include "absl/status/statusor.h"
#include "common/sampling_limits.h"
#include "coordinator/request_state.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "generation.pb.h"

namespace tpserve::coordinator {

struct ValidationLimits {
  int max_model_len = 2048;
  int max_prompt_tokens = 0;       // 0 = max_model_len - 1
  int max_new_tokens = 0;          // 0 = no server-side cap beyond the context
  int max_stop_strings = 16;
  int max_stop_string_bytes = 256;
  // The logprobs cap is not a limit an operator sets: it is kMaxLogprobs (common/sampling_limits.h).
};

absl::StatusOr<RequestSpec> ValidateGenerateRequest(const tpserve::v1::GenerateRequest& request,
                                                    const Tokenizer& tokenizer, const ValidationLimits& limits);

// Chat messages from the public proto, validated (roles, UTF-8) and rendered to token ids.
absl::StatusOr<std::vector<int32_t>> EncodeChatInput(const tpserve::v1::ChatInput& chat, const Tokenizer& tokenizer);

}  // namespace tpserve::coordinator
