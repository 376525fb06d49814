// Recognising a model's chat_template text and choosing the template; see chat_template_select.h.
#include "coordinator/tokenizer/chat_template_select.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator {
namespace {

// meta-llama/Llama-2-7b-chat-hf tokenizer_config.json.
constexpr char kLlama2ChatTemplate[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

// chujiezheng/chat_templates chat_templates/vicuna.jinja with .replace('    ', '').replace('\n', '').
constexpr char kVicunaTemplate[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'].strip() + '\\n\\n' %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 %}{{ bos_token + system_message }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'].strip() + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'].strip() + eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

// HuggingFaceH4/zephyr-7b-beta tokenizer_config.json.
constexpr char kZephyrTemplate[] =
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";

// teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json.
constexpr char kChatmlTemplate[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

absl::string_view TrimTrailingNewlines(absl::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<ChatTemplateKind> IdentifyChatTemplate(absl::string_view jinja) {
  static const std::pair<ChatTemplateKind, const char*> kKnown[] = {
      {ChatTemplateKind::kTulu, kTuluChatTemplate},     {ChatTemplateKind::kLlama2Chat, kLlama2ChatTemplate},
      {ChatTemplateKind::kVicuna, kVicunaTemplate},     {ChatTemplateKind::kZephyr, kZephyrTemplate},
      {ChatTemplateKind::kChatml, kChatmlTemplate},
  };
  const absl::string_view text = TrimTrailingNewlines(jinja);
  for (const auto& [kind, known] : kKnown) {
    if (text == TrimTrailingNewlines(known)) return kind;
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<std::string>> ParseChatTemplateJson(absl::string_view json_text,
                                                                 const std::string& file) {
  nlohmann::json config = nlohmann::json::parse(json_text.begin(), json_text.end(), nullptr,
                                                /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(file, ": not valid JSON"));
  if (!config.is_object()) return absl::InvalidArgumentError(absl::StrCat(file, ": expected a JSON object"));
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_array()) {
    for (const auto& entry : *it) {
      if (!entry.is_object()) break;
      auto name = entry.find("name");
      auto tmpl = entry.find("template");
      if (name == entry.end() || tmpl == entry.end() || !name->is_string() || !tmpl->is_string()) break;
      if (*name == "default") return std::optional<std::string>(tmpl->get<std::string>());
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": \"chat_template\" must be a string or a list of {\"name\", \"template\"} objects "
                         "with one named \"default\""));
}

absl::StatusOr<ChatTemplateKind> SelectChatTemplate(const std::optional<std::string>& text,
                                                    const std::string& origin, absl::string_view override_name) {
  if (!override_name.empty()) {
    auto kind = ChatTemplateFromName(override_name);
    if (!kind.ok()) return absl::InvalidArgumentError(absl::StrCat("--chat-template: ", kind.status().message()));
    return *kind;
  }
  if (!text.has_value()) return ChatTemplateKind::kTulu;
  if (auto kind = IdentifyChatTemplate(*text); kind.has_value()) return *kind;
  return absl::InvalidArgumentError(absl::StrCat(
      origin, ": the model's chat_template is not one tpserve can render (it recognises the exact texts of ",
      ChatTemplateNames(),
      "; see docs/API.md). Start with --chat-template NAME to choose one of those for this model; tpserve does "
      "not fall back to another format silently"));
}

}  // namespace tpserve::coordinator
