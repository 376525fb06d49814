// The served model's tokenizer read from its files (DIR/tokenizer.model and the Hugging Face special-token
// configs, through tpserve's own Tokenizer), for servers that have no tokenize endpoint (the OpenAI API).
// Text prompts are exact. A chat is only estimated (BOS + each message's content), because the server applies
// its own chat template; the server's usage reports the real prompt length.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bench/loadgen/prompt_tokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace tpserve::bench {

// Immutable after Load: thread-safe.
class LocalPromptTokenizer : public PromptTokenizer {
 public:
  // Reads DIR's tokenizer; INVALID_ARGUMENT naming --tokenizer when it cannot. The context is `max_context`
  // when > 0, else DIR/config.json's max_position_embeddings when present, else unknown (0).
  static absl::StatusOr<std::unique_ptr<LocalPromptTokenizer>> Load(const std::string& dir, int max_context);

  absl::StatusOr<std::vector<int32_t>> Tokenize(const v1::TokenizeRequest& req) override;
  int bos_id() const override { return tokenizer_->bos_id(); }
  int max_context() const override { return max_context_; }
  // Text of `ids` (BOS/EOS dropped), as the chat endpoint sends token-id prompts.
  std::string Decode(absl::Span<const int32_t> ids) const { return tokenizer_->Decode(ids); }

 private:
  LocalPromptTokenizer() = default;
  std::unique_ptr<coordinator::Tokenizer> tokenizer_;
  int max_context_ = 0;
};

}  // namespace tpserve::bench
