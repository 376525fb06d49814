// The Tulu 2 chat template (<|user|> / <|assistant|> turns) rendered in C++ instead of Jinja.
#pragma once

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

// The chat_template string exactly as the Tulu V2 / V2.5 releases ship it in tokenizer_config.json.
// RenderTuluChat is the C++ rendering of this Jinja (with trim_blocks, so a newline right after a {% %} tag is
// dropped and a newline after a {{ }} expression is kept). TrainTokenizer writes it into tokenizer_config.json.
extern const char kTuluChatTemplate[];

// Renders `messages` with the Tulu template:
//   user       "<|user|>\n" + content + "\n"
//   assistant  "<|assistant|>\n" + content + eos_token + "\n"
//   system     "<|system|>\n" + content + "\n"   (see below)
// then "<|assistant|>\n" when add_generation_prompt. BOS is NOT part of the text (the caller adds the id).
//
// System messages: the shipped Jinja silently drops them, which would discard a client's instructions without
// telling anyone. Tulu 2's SFT data (open-instruct's encode_with_messages_format) formats system turns as
// "<|system|>\n" + content + "\n", so the model has seen exactly this text; we render that instead of dropping.
//
// Errors (INVALID_ARGUMENT): no messages; a role other than system/user/assistant (names the index and
// role); content that is not valid UTF-8 (names the index).
absl::StatusOr<std::string> RenderTuluChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                                           absl::string_view eos_token);

// Like RenderTuluChat but returns the text split around each template-inserted eos_token, so that a tokenizer
// can encode those as the EOS id (the way Hugging Face's tokenizer treats the "</s>" it finds after Jinja
// renders) without also turning a literal "</s>" typed by a user into EOS. segments.size() == eos count + 1.
absl::StatusOr<std::vector<std::string>> RenderTuluChatSegments(absl::Span<const ChatMessage> messages,
                                                                bool add_generation_prompt);

}  // namespace tpserve::coordinator
