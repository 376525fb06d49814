// The Llama-2-family chat templates tpserve knows (Tulu 2, Llama-2-chat, Vicuna, Zephyr, ChatML), rendered in
// C++ instead of Jinja. Which one a model uses is decided once, at startup (chat_template_select.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tpserve::coordinator {

// One turn of a conversation. role is "system", "user" or "assistant"; content is UTF-8 text.
struct ChatMessage {
  std::string role;
  std::string content;
};

enum class ChatTemplateKind : uint8_t { kTulu, kLlama2Chat, kVicuna, kZephyr, kChatml };

// "tulu", "llama-2-chat", "vicuna", "zephyr", "chatml": the names --chat-template takes.
absl::string_view ChatTemplateName(ChatTemplateKind kind);
// All names, comma separated, for messages.
std::string ChatTemplateNames();
// Inverse of ChatTemplateName; INVALID_ARGUMENT listing the names for anything else.
absl::StatusOr<ChatTemplateKind> ChatTemplateFromName(absl::string_view name);

// A rendered conversation: the template's text with the special tokens the template itself inserted (its
// bos_token / eos_token) kept apart, so that a tokenizer encodes exactly those as their ids and never a "</s>"
// a user typed. texts.size() == specials.size() + 1; specials[i] sits between texts[i] and texts[i + 1].
struct RenderedChat {
  enum class Special : uint8_t { kBos, kEos };
  std::vector<std::string> texts = {""};
  std::vector<Special> specials;

  // The whole text, with `bos` / `eos` written where the template put its special tokens.
  std::string Join(absl::string_view bos, absl::string_view eos) const;
  // True when the text starts with the template's BOS (the tokenizer then prepends none).
  bool StartsWithBos() const { return !specials.empty() && specials[0] == Special::kBos && texts[0].empty(); }
};

// Renders `messages` with `kind` exactly as Hugging Face's apply_chat_template renders the template text that
// chat_template_select.cc recognises for it (jinja2 with trim_blocks and lstrip_blocks), except:
//   - Tulu: the shipped template silently drops system turns, which would discard a client's instructions
//     without telling anyone. Tulu 2's SFT data (open-instruct's encode_with_messages_format) formats system
//     turns as "<|system|>\n" + content + "\n", so the model has seen exactly this text; we render that.
//   - Errors instead of silent drops: a role other than system/user/assistant, and (llama-2-chat, vicuna) a
//     system message that is not the first one, which those templates would drop or reject.
// Per template (B = bos_token, E = eos_token, strip() = Python's str.strip):
//   tulu          user "<|user|>\n" c "\n"; assistant "<|assistant|>\n" c E "\n"; system "<|system|>\n" c "\n";
//                 then "<|assistant|>\n" when add_generation_prompt
//   llama-2-chat  user B "[INST] " strip(c) " [/INST]"; assistant " " strip(c) " " E; a first system message
//                 becomes "<<SYS>>\n" s "\n<</SYS>>\n\n" before the first user content; no generation prompt
//   vicuna        B, then strip(s) "\n\n" for a first system message; user "USER: " strip(c) "\n";
//                 assistant "ASSISTANT: " strip(c) E "\n"; then "ASSISTANT:" when add_generation_prompt
//   zephyr        "<|" role "|>\n" c E "\n" for every message; then "<|assistant|>\n"
//   chatml        "<|im_start|>" role "\n" c "<|im_end|>\n"; then "<|im_start|>assistant\n"
// llama-2-chat and vicuna need user/assistant to alternate starting with user (after the optional system
// message), as their templates' raise_exception says.
// Errors (INVALID_ARGUMENT): no messages; an unknown role (names the index and role); content that is not
// valid UTF-8 (names the index); the ordering rules above (names the index).
absl::StatusOr<RenderedChat> RenderChatTemplate(ChatTemplateKind kind, absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt);

// The literal marker strings `kind` writes that a model may have made single tokens ("<|im_start|>").
// Tokenizer::Load refuses a model that declares one as an added token outside tokenizer.model (see there).
std::vector<absl::string_view> ChatTemplateMarkers(ChatTemplateKind kind);

// The chat_template string exactly as the Tulu V2 / V2.5 releases ship it in tokenizer_config.json.
// TrainTokenizer writes it into tokenizer_config.json.
extern const char kTuluChatTemplate[];

// RenderChatTemplate(kTulu, ...).Join("", eos_token) without BOS (the caller adds the id).
absl::StatusOr<std::string> RenderTuluChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                                           absl::string_view eos_token);

// RenderChatTemplate(kTulu, ...).texts: the text split around each template-inserted eos_token.
// segments.size() == eos count + 1.
absl::StatusOr<std::vector<std::string>> RenderTuluChatSegments(absl::Span<const ChatMessage> messages,
                                                                bool add_generation_prompt);

}  // namespace tpserve::coordinator
