// Implementation of coordinator/validation.h.
#include "coordinator/validation.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/status_details.h"
#include "coordinator/tokenizer/utf8.h"

namespace tpserve::coordinator {

namespace v1 = tpserve::v1;

namespace {

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

absl::Status CheckUtf8(absl::string_view field, absl::string_view text) {
  if (!IsValidUtf8(text)) return Invalid(absl::StrCat(field, ": is not valid UTF-8"));
  return absl::OkStatus();
}

uint64_t RandomSeed() {
  static thread_local std::mt19937_64 gen(std::random_device{}());
  return gen();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> EncodeChatInput(const v1::ChatInput& chat, const Tokenizer& tokenizer) {
  if (chat.messages_size() == 0) return Invalid("chat.messages: must hold at least one message");
  std::vector<ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const auto& m = chat.messages(i);
    auto s = CheckUtf8(absl::StrCat("chat.messages[", i, "].content"), m.content());
    if (!s.ok()) return s;
    s = CheckUtf8(absl::StrCat("chat.messages[", i, "].role"), m.role());
    if (!s.ok()) return s;
    messages.push_back(ChatMessage{m.role(), m.content()});
  }
  bool add_generation_prompt = chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
  return tokenizer.EncodeChat(messages, add_generation_prompt);
}

absl::StatusOr<RequestSpec> ValidateGenerateRequest(const v1::GenerateRequest& request, const Tokenizer& tokenizer,
                                                    const ValidationLimits& limits) {
  RequestSpec spec;
  spec.request_id = request.request_id();
  if (spec.request_id.size() > 256) return Invalid("request_id: at most 256 bytes");
  if (auto s = CheckUtf8("request_id", spec.request_id); !s.ok()) return s;

  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      if (request.prompt().empty()) return Invalid("prompt: must not be empty");
      if (auto s = CheckUtf8("prompt", request.prompt()); !s.ok()) return s;
      spec.prompt_ids = tokenizer.Encode(request.prompt(), /*add_bos=*/true);
      break;
    }
    case v1::GenerateRequest::kChat: {
      auto ids = EncodeChatInput(request.chat(), tokenizer);
      if (!ids.ok()) return ids.status();
      spec.prompt_ids = std::move(*ids);
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("token_ids.ids: must not be empty");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
          return Invalid(absl::StrCat("token_ids.ids[", i, "]: id ", ids[i], " is outside the vocabulary [0, ",
                                      tokenizer.vocab_size(), ")"));
        }
      }
      spec.prompt_ids.assign(ids.begin(), ids.end());
      break;
    }
    default:
      return Invalid("input: set one of prompt, chat or token_ids");
  }

  const int prompt_len = static_cast<int>(spec.prompt_ids.size());
  const int max_prompt = limits.max_prompt_tokens > 0 ? std::min(limits.max_prompt_tokens, limits.max_model_len - 1)
                                                       : limits.max_model_len - 1;
  if (prompt_len > max_prompt) {
    return WithReason(Invalid(absl::StrCat("prompt: ", prompt_len, " tokens is longer than the limit of ", max_prompt,
                                           " tokens (context length ", limits.max_model_len, ")")),
                      reason::kContextLengthExceeded);
  }

  const auto& st = request.stopping();
  if (st.max_new_tokens() < 1) {
    return Invalid(absl::StrCat("stopping.max_new_tokens: must be >= 1 (got ", st.max_new_tokens(), ")"));
  }
  if (limits.max_new_tokens > 0 && st.max_new_tokens() > limits.max_new_tokens) {
    return Invalid(absl::StrCat("stopping.max_new_tokens: ", st.max_new_tokens(), " is above the server limit of ",
                                limits.max_new_tokens));
  }
  if (static_cast<int64_t>(prompt_len) + st.max_new_tokens() > limits.max_model_len) {
    return WithReason(
        Invalid(absl::StrCat("stopping.max_new_tokens: prompt (", prompt_len, " tokens) + max_new_tokens (",
                             st.max_new_tokens(), ") exceeds the context length of ", limits.max_model_len,
                             "; lower max_new_tokens to at most ", limits.max_model_len - prompt_len)),
        reason::kContextLengthExceeded);
  }
  spec.max_new_tokens = st.max_new_tokens();
  if (st.stop_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat("stopping.stop: at most ", limits.max_stop_strings, " stop strings"));
  }
  for (int i = 0; i < st.stop_size(); ++i) {
    const std::string& s = st.stop(i);
    if (s.empty()) return Invalid(absl::StrCat("stopping.stop[", i, "]: must not be empty"));
    if (static_cast<int>(s.size()) > limits.max_stop_string_bytes) {
      return Invalid(absl::StrCat("stopping.stop[", i, "]: at most ", limits.max_stop_string_bytes, " bytes"));
    }
    if (auto status = CheckUtf8(absl::StrCat("stopping.stop[", i, "]"), s); !status.ok()) return status;
    spec.stop.push_back(s);
  }
  for (int i = 0; i < st.stop_token_ids_size(); ++i) {
    int32_t id = st.stop_token_ids(i);
    if (id < 0 || id >= tokenizer.vocab_size()) {
      return Invalid(absl::StrCat("stopping.stop_token_ids[", i, "]: id ", id, " is outside the vocabulary"));
    }
    spec.stop_token_ids.push_back(id);
  }
  spec.ignore_eos = st.ignore_eos();

  const auto& sp = request.sampling();
  auto& sc = spec.sampling;
  float temperature = sp.has_temperature() ? sp.temperature() : 1.0f;
  if (!std::isfinite(temperature) || temperature < 0) {
    return Invalid(absl::StrFormat("sampling.temperature: must be >= 0 (got %g); 0 means greedy", temperature));
  }
  float top_p = sp.has_top_p() ? sp.top_p() : 1.0f;
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return Invalid(absl::StrFormat("sampling.top_p: must be in (0, 1] (got %g)", top_p));
  }
  if (sp.top_k() < 0) return Invalid(absl::StrCat("sampling.top_k: must be >= 0 (got ", sp.top_k(), "); 0 disables it"));
  if (!(sp.min_p() >= 0.0f && sp.min_p() <= 1.0f)) {
    return Invalid(absl::StrFormat("sampling.min_p: must be in [0, 1] (got %g)", sp.min_p()));
  }
  float rep = sp.has_repetition_penalty() ? sp.repetition_penalty() : 1.0f;
  if (!(rep > 0.0f) || !std::isfinite(rep)) {
    return Invalid(absl::StrFormat("sampling.repetition_penalty: must be > 0 (got %g); 1 disables it", rep));
  }
  if (!(sp.presence_penalty() >= -2.0f && sp.presence_penalty() <= 2.0f)) {
    return Invalid(absl::StrFormat("sampling.presence_penalty: must be in [-2, 2] (got %g)", sp.presence_penalty()));
  }
  if (!(sp.frequency_penalty() >= -2.0f && sp.frequency_penalty() <= 2.0f)) {
    return Invalid(absl::StrFormat("sampling.frequency_penalty: must be in [-2, 2] (got %g)", sp.frequency_penalty()));
  }
  sc.set_temperature(temperature);
  sc.set_top_k(sp.top_k());
  sc.set_top_p(top_p);
  sc.set_min_p(sp.min_p());
  sc.set_repetition_penalty(rep);
  sc.set_presence_penalty(sp.presence_penalty());
  sc.set_frequency_penalty(sp.frequency_penalty());
  sc.set_seed(sp.has_seed() ? sp.seed() : RandomSeed());

  if (request.logprobs() < 0 || request.logprobs() > kMaxLogprobs) {
    return Invalid(absl::StrCat("logprobs: must be in [0, ", kMaxLogprobs, "] (got ", request.logprobs(), ")"));
  }
  spec.logprobs = request.logprobs();
  sc.set_logprobs(request.logprobs());
  spec.priority = request.priority();
  spec.no_speculation = request.no_speculation();
  return spec;
}

}  // namespace tpserve::coordinator
