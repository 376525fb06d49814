// Tulu 2 chat template rendering; see chat_template.h for the format and the system-message choice.
#include "coordinator/tokenizer/chat_template.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/tokenizer/utf8.h"

namespace tpserve::coordinator {

const char kTuluChatTemplate[] =
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";

absl::StatusOr<std::vector<std::string>> RenderTuluChatSegments(absl::Span<const ChatMessage> messages,
                                                                bool add_generation_prompt) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("messages: empty; a chat request needs at least one message");
  }
  std::vector<std::string> segments(1);
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (!IsValidUtf8(m.content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content (role \"", m.role, "\") is not valid UTF-8"));
    }
    if (m.role == "user") {
      absl::StrAppend(&segments.back(), "<|user|>\n", m.content, "\n");
    } else if (m.role == "assistant") {
      absl::StrAppend(&segments.back(), "<|assistant|>\n", m.content);
      segments.emplace_back("\n");  // eos_token sits between the two segments
    } else if (m.role == "system") {
      absl::StrAppend(&segments.back(), "<|system|>\n", m.content, "\n");
    } else {
      std::string shown = IsValidUtf8(m.role) ? m.role : "<invalid UTF-8>";
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: unknown role \"", shown,
                                                     "\"; expected \"system\", \"user\" or \"assistant\""));
    }
  }
  if (add_generation_prompt) absl::StrAppend(&segments.back(), "<|assistant|>\n");
  return segments;
}

absl::StatusOr<std::string> RenderTuluChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                                           absl::string_view eos_token) {
  auto segments = RenderTuluChatSegments(messages, add_generation_prompt);
  if (!segments.ok()) return segments.status();
  std::string out = std::move((*segments)[0]);
  for (size_t i = 1; i < segments->size(); ++i) absl::StrAppend(&out, eos_token, (*segments)[i]);
  return out;
}

}  // namespace tpserve::coordinator
