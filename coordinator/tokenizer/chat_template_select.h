// Which chat template a model uses: its own chat_template text recognised among the ones tpserve renders
// natively (chat_template.h), or the --chat-template override. Decided once at startup; a template tpserve does
// not know is refused there, never rendered as Tulu.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/tokenizer/chat_template.h"

namespace tpserve::coordinator {

// The kind whose known Jinja text `jinja` is, or nullopt. Exact comparison (trailing newlines ignored: with
// trim_blocks they render nothing after a final {% %} tag) against the texts the model repositories ship:
//   tulu          allenai Tulu V2 / V2.5 (kTuluChatTemplate)
//   llama-2-chat  meta-llama/Llama-2-{7,13,70}b-chat-hf
//   vicuna        chujiezheng/chat_templates vicuna.jinja as its README puts it into tokenizer_config.json
//                 (lmsys' Vicuna v1.5 repositories ship none)
//   zephyr        HuggingFaceH4/zephyr-7b-beta (also zephyr-7b-alpha, TinyLlama-1.1B-Chat)
//   chatml        teknium/OpenHermes-2.5-Mistral-7B (transformers' former default ChatML template)
// The texts, with where each came from, are also in scripts/make-chat-template-vectors.py.
std::optional<ChatTemplateKind> IdentifyChatTemplate(absl::string_view jinja);

// The "chat_template" of a tokenizer_config.json's JSON_TEXT: a string, or Hugging Face's list of
// {"name", "template"} objects (the one named "default" is used). nullopt when the key is absent or null.
// INVALID_ARGUMENT (naming FILE) for malformed JSON or any other shape.
absl::StatusOr<std::optional<std::string>> ParseChatTemplateJson(absl::string_view json_text,
                                                                 const std::string& file);

// The template to render with. OVERRIDE_NAME (the --chat-template flag; "" = none) wins. Otherwise the
// model's own TEXT (read from ORIGIN, named in messages) must be one IdentifyChatTemplate knows; a model with no
// chat template gets Tulu, tpserve's first model's format (make-model writes that template too).
// INVALID_ARGUMENT naming --chat-template for an unknown override name or an unrecognised template.
absl::StatusOr<ChatTemplateKind> SelectChatTemplate(const std::optional<std::string>& text,
                                                    const std::string& origin, absl::string_view override_name);

}  // namespace tpserve::coordinator
