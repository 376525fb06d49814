// Implementation of coordinator/openai/openai_format.h.
#include "coordinator/openai/openai_format.h"

namespace tpserve::coordinator::openai {

namespace v1 = tpserve::v1;
using json = nlohmann::json;

json FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_EOS:
    case v1::FINISH_REASON_STOP_SEQUENCE:
    case v1::FINISH_REASON_STOP_TOKEN:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_UNSPECIFIED:
      return nullptr;
    default:
      return "abort";
  }
}

json UsageJson(int prompt_tokens, int completion_tokens, int cached_tokens, const v1::SpeculativeUsage& speculative) {
  json usage = {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens},
                {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
  if (speculative.num_drafts() > 0) {
    usage["speculative"] = {{"num_drafts", speculative.num_drafts()},
                            {"num_draft_tokens", speculative.num_draft_tokens()},
                            {"num_accepted_tokens", speculative.num_accepted_tokens()}};
  }
  return usage;
}

std::string TokenText(const Tokenizer& tokenizer, int32_t id) {
  const TokenPiece* p = tokenizer.Piece(id);
  if (p == nullptr) return "";
  switch (p->kind) {
    case TokenPiece::Kind::kByte:
      return std::string(1, static_cast<char>(p->byte));
    case TokenPiece::Kind::kControl:
      return tokenizer.IdToPiece(id);
    default:
      return p->text;
  }
}

namespace {

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

void AppendChatLogprobs(const TokenLogprobs& logprobs, int top, const Tokenizer& tokenizer, json* content) {
  for (const auto& lp : logprobs) {
    const std::string text = TokenText(tokenizer, lp.token_id());
    json alts = json::array();
    for (int i = 0; i < lp.top_size() && i < top; ++i) {
      const std::string t = TokenText(tokenizer, lp.top(i).token_id());
      alts.push_back({{"token", t}, {"logprob", lp.top(i).logprob()}, {"bytes", Bytes(t)}});
    }
    content->push_back({{"token", text}, {"logprob", lp.logprob()}, {"bytes", Bytes(text)}, {"top_logprobs", alts}});
  }
}

json EmptyCompletionLogprobs() {
  return {{"tokens", json::array()},
          {"token_logprobs", json::array()},
          {"top_logprobs", json::array()},
          {"text_offset", json::array()}};
}

void AppendCompletionLogprobs(const TokenLogprobs& logprobs, int top, const Tokenizer& tokenizer, json* out,
                              int* text_offset) {
  for (const auto& lp : logprobs) {
    const std::string text = TokenText(tokenizer, lp.token_id());
    (*out)["tokens"].push_back(text);
    (*out)["token_logprobs"].push_back(lp.logprob());
    json alts = json::object();
    for (int i = 0; i < lp.top_size() && i < top; ++i) {
      alts[TokenText(tokenizer, lp.top(i).token_id())] = lp.top(i).logprob();
    }
    (*out)["top_logprobs"].push_back(top > 0 ? alts : json(nullptr));
    (*out)["text_offset"].push_back(*text_offset);
    *text_offset += static_cast<int>(text.size());
  }
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace tpserve::coordinator::openai
