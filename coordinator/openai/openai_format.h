// The JSON pieces of OpenAI responses that do not depend on a call's state: finish reasons, usage, and the
// two logprobs layouts (chat's "content" list; completions' parallel token arrays).
#pragma once

#include <string>

#include "coordinator/tokenizer/tokenizer.h"
#include "generation.pb.h"
#include "google/protobuf/repeated_field.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator::openai {

// "stop" (EOS, a stop string or a stop token id) or "length"; nullptr JSON while running.
nlohmann::json FinishReasonJson(tpserve::v1::FinishReason reason);

// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details": {"cached_tokens"}}, plus
// tpserve's "speculative": {"num_drafts", "num_draft_tokens", "num_accepted_tokens"} (gRPC Usage.speculative)
// when `speculative` had proposals verified (num_drafts > 0); absent otherwise, as in the gRPC message.
nlohmann::json UsageJson(int prompt_tokens, int completion_tokens, int cached_tokens,
                         const tpserve::v1::SpeculativeUsage& speculative = {});

// The text a token stands for on its own (SentencePiece's "▁" as a space, a byte-fallback piece as its byte,
// control tokens as their piece, e.g. "</s>"). May be an incomplete UTF-8 sequence.
std::string TokenText(const Tokenizer& tokenizer, int32_t id);

using TokenLogprobs = google::protobuf::RepeatedPtrField<tpserve::v1::TokenLogprob>;

// Chat: appends {"token", "logprob", "bytes", "top_logprobs": [..top..]} per token to `content` (an array).
void AppendChatLogprobs(const TokenLogprobs& logprobs, int top, const Tokenizer& tokenizer, nlohmann::json* content);

// Completions: appends to {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; *text_offset is the
// running offset of the next token in the choice's text.
void AppendCompletionLogprobs(const TokenLogprobs& logprobs, int top, const Tokenizer& tokenizer,
                              nlohmann::json* out, int* text_offset);
nlohmann::json EmptyCompletionLogprobs();

// Serialises for the wire: invalid UTF-8 (a lone byte token) becomes U+FFFD instead of an exception.
std::string Dump(const nlohmann::json& j);

}  // namespace tpserve::coordinator::openai
