// Native renderings of the chat templates tpserve knows; see chat_template.h for each format and the choices.
#include "coordinator/tokenizer/chat_template.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

namespace {

constexpr std::pair<ChatTemplateKind, absl::string_view> kNames[] = {
    {ChatTemplateKind::kTulu, "tulu"},     {ChatTemplateKind::kLlama2Chat, "llama-2-chat"},
    {ChatTemplateKind::kVicuna, "vicuna"}, {ChatTemplateKind::kZephyr, "zephyr"},
    {ChatTemplateKind::kChatml, "chatml"},
};

// Appends text and special tokens to a RenderedChat.
class ChatWriter {
 public:
  template <typename... Pieces>
  void Text(const Pieces&... pieces) {
    absl::StrAppend(&out_.texts.back(), pieces...);
  }
  void Special(RenderedChat::Special s) {
    out_.specials.push_back(s);
    out_.texts.emplace_back();
  }
  void Bos() { Special(RenderedChat::Special::kBos); }
  void Eos() { Special(RenderedChat::Special::kEos); }
  RenderedChat Take() { return std::move(out_); }

 private:
  RenderedChat out_;
};

// The checks every template shares: at least one message, known roles, UTF-8 content.
absl::Status ValidateMessages(absl::Span<const ChatMessage> messages) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("messages: empty; a chat request needs at least one message");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (!IsValidUtf8(m.content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content (role \"", m.role, "\") is not valid UTF-8"));
    }
    if (m.role != "user" && m.role != "assistant" && m.role != "system") {
      std::string shown = IsValidUtf8(m.role) ? m.role : "<invalid UTF-8>";
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: unknown role \"", shown,
                                                     "\"; expected \"system\", \"user\" or \"assistant\""));
    }
  }
  return absl::OkStatus();
}

// llama-2-chat and vicuna: an optional first system message, then user/assistant alternating from user.
// Returns the index of the first non-system message.
absl::StatusOr<size_t> CheckAlternation(absl::Span<const ChatMessage> messages, absl::string_view name) {
  const size_t first = messages[0].role == "system" ? 1 : 0;
  for (size_t i = first; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role == "system") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: the ", name,
                                                     " chat template allows a system message only first"));
    }
    if ((role == "user") != ((i - first) % 2 == 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role: the ", name,
                       " chat template needs roles to alternate user/assistant/user/assistant/... (after an "
                       "optional first system message); got \"",
                       role, "\""));
    }
  }
  return first;
}

RenderedChat RenderTulu(absl::Span<const ChatMessage> messages, bool add_generation_prompt) {
  ChatWriter w;
  for (const ChatMessage& m : messages) {
    if (m.role == "assistant") {
      w.Text("<|assistant|>\n", m.content);
      w.Eos();
      w.Text("\n");
    } else {
      w.Text("<|", m.role, "|>\n", m.content, "\n");
    }
  }
  if (add_generation_prompt) w.Text("<|assistant|>\n");
  return w.Take();
}

RenderedChat RenderLlama2Chat(absl::Span<const ChatMessage> messages, size_t first) {
  ChatWriter w;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    std::string content = m.content;
    if (i == first && first == 1) {
      content = absl::StrCat("<<SYS>>\n", messages[0].content, "\n<</SYS>>\n\n", m.content);
    }
    if (m.role == "user") {
      w.Bos();
      w.Text("[INST] ", StripPythonWhitespace(content), " [/INST]");
    } else {
      w.Text(" ", StripPythonWhitespace(content), " ");
      w.Eos();
    }
  }
  return w.Take();
}

RenderedChat RenderVicuna(absl::Span<const ChatMessage> messages, size_t first, bool add_generation_prompt) {
  ChatWriter w;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (i == first) {
      w.Bos();
      if (first == 1) w.Text(StripPythonWhitespace(messages[0].content), "\n\n");
    }
    if (m.role == "user") {
      w.Text("USER: ", StripPythonWhitespace(m.content), "\n");
    } else {
      w.Text("ASSISTANT: ", StripPythonWhitespace(m.content));
      w.Eos();
      w.Text("\n");
    }
  }
  if (add_generation_prompt) w.Text("ASSISTANT:");
  return w.Take();
}

RenderedChat RenderZephyr(absl::Span<const ChatMessage> messages, bool add_generation_prompt) {
  ChatWriter w;
  for (const ChatMessage& m : messages) {
    w.Text("<|", m.role, "|>\n", m.content);
    w.Eos();
    w.Text("\n");
  }
  if (add_generation_prompt) w.Text("<|assistant|>\n");
  return w.Take();
}

RenderedChat RenderChatml(absl::Span<const ChatMessage> messages, bool add_generation_prompt) {
  ChatWriter w;
  for (const ChatMessage& m : messages) w.Text("<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  if (add_generation_prompt) w.Text("<|im_start|>assistant\n");
  return w.Take();
}

}  // namespace

absl::string_view ChatTemplateName(ChatTemplateKind kind) {
  for (const auto& [k, name] : kNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

std::string ChatTemplateNames() {
  return absl::StrJoin(kNames, ", ", [](std::string* out, const auto& entry) { absl::StrAppend(out, entry.second); });
}

absl::StatusOr<ChatTemplateKind> ChatTemplateFromName(absl::string_view name) {
  for (const auto& [kind, n] : kNames) {
    if (n == name) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template \"", name, "\"; expected one of ", ChatTemplateNames()));
}

std::vector<absl::string_view> ChatTemplateMarkers(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kTulu:
    case ChatTemplateKind::kZephyr:
      return {"<|user|>", "<|assistant|>", "<|system|>"};
    case ChatTemplateKind::kLlama2Chat:
      return {"[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"};
    case ChatTemplateKind::kVicuna:
      return {};
    case ChatTemplateKind::kChatml:
      return {"<|im_start|>", "<|im_end|>"};
  }
  return {};
}

std::string RenderedChat::Join(absl::string_view bos, absl::string_view eos) const {
  std::string out = texts[0];
  for (size_t i = 0; i < specials.size(); ++i) {
    absl::StrAppend(&out, specials[i] == Special::kBos ? bos : eos, texts[i + 1]);
  }
  return out;
}

absl::StatusOr<RenderedChat> RenderChatTemplate(ChatTemplateKind kind, absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt) {
  if (absl::Status s = ValidateMessages(messages); !s.ok()) return s;
  switch (kind) {
    case ChatTemplateKind::kTulu:
      return RenderTulu(messages, add_generation_prompt);
    case ChatTemplateKind::kLlama2Chat: {
      auto first = CheckAlternation(messages, "llama-2-chat");
      if (!first.ok()) return first.status();
      return RenderLlama2Chat(messages, *first);
    }
    case ChatTemplateKind::kVicuna: {
      auto first = CheckAlternation(messages, "vicuna");
      if (!first.ok()) return first.status();
      return RenderVicuna(messages, *first, add_generation_prompt);
    }
    case ChatTemplateKind::kZephyr:
      return RenderZephyr(messages, add_generation_prompt);
    case ChatTemplateKind::kChatml:
      return RenderChatml(messages, add_generation_prompt);
  }
  return absl::InternalError("unhandled chat template kind");
}

absl::StatusOr<std::vector<std::string>> RenderTuluChatSegments(absl::Span<const ChatMessage> messages,
                                                                bool add_generation_prompt) {
  auto chat = RenderChatTemplate(ChatTemplateKind::kTulu, messages, add_generation_prompt);
  if (!chat.ok()) return chat.status();
  return std::move(chat->texts);
}

absl::StatusOr<std::string> RenderTuluChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                                           absl::string_view eos_token) {
  auto chat = RenderChatTemplate(ChatTemplateKind::kTulu, messages, add_generation_prompt);
  if (!chat.ok()) return chat.status();
  return chat->Join("", eos_token);
}

}  // namespace tpserve::coordinator
