// Implementation of bench/loadgen/local_prompt_tokenizer.h.
#include "bench/loadgen/local_prompt_tokenizer.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {

absl::StatusOr<std::unique_ptr<LocalPromptTokenizer>> LocalPromptTokenizer::Load(const std::string& dir,
                                                                                  int max_context) {
  auto tok = coordinator::Tokenizer::Load(dir);
  if (!tok.ok()) return absl::InvalidArgumentError(absl::StrCat("--tokenizer '", dir, "': ", tok.status().message()));
  std::unique_ptr<LocalPromptTokenizer> t(new LocalPromptTokenizer());
  t->tokenizer_ = std::move(*tok);
  t->max_context_ = max_context;
  if (t->max_context_ <= 0) {
    std::ifstream in(dir + "/config.json");
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("max_position_embeddings") && j["max_position_embeddings"].is_number_integer()) {
      t->max_context_ = j["max_position_embeddings"].get<int>();
    }
  }
  return t;
}

absl::StatusOr<std::vector<int32_t>> LocalPromptTokenizer::Tokenize(const v1::TokenizeRequest& req) {
  if (req.has_chat()) {
    std::vector<int32_t> ids;
    if (bos_id() >= 0) ids.push_back(bos_id());
    for (const auto& m : req.chat().messages()) {
      const std::vector<int32_t> part = tokenizer_->Encode(m.content(), /*add_bos=*/false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    return ids;
  }
  return tokenizer_->Encode(req.text(), req.add_bos());
}

}  // namespace tpserve::bench
