// Llama-family SentencePiece tokenizer with Hugging Face special-token config and the model's chat template.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "coordinator/tokenizer/chat_template.h"
#include "coordinator/tokenizer/chat_template_select.h"

namespace tpserve::coordinator {

namespace sp_bridge {
class Processor;
}  // namespace sp_bridge

// How one vocabulary entry decodes, precomputed at Load so the incremental detokenizer never touches
// SentencePiece (and stays O(piece length) per token).
struct TokenPiece {
  enum class Kind : uint8_t {
    kText,     // ordinary or user-defined piece; `text` has "▁" already replaced by " "
    kByte,     // byte-fallback piece <0xNN>; `byte` holds NN
    kControl,  // <s>, </s> and other control pieces, plus the configured BOS/EOS: decode to nothing
    kUnknown,  // <unk>: decodes to `text` (SentencePiece's unk surface, " ⁇ " by default)
  };
  Kind kind = Kind::kText;
  uint8_t byte = 0;
  bool leading_space = false;  // kText whose piece starts with "▁" (text starts with " ")
  std::string text;
};

// The BOS/EOS token strings a Hugging Face tokenizer_config.json or special_tokens_map.json names; a key that
// is absent or null stays nullopt (so a later file can overlay an earlier one).
struct SpecialTokenNames {
  std::optional<std::string> bos;
  std::optional<std::string> eos;
};

// Parses one such file's JSON_TEXT and overlays the tokens it names onto *NAMES (Tokenizer::Load's parser,
// exposed so fuzz/ can drive it from bytes). FILE only names the file in messages. INVALID_ARGUMENT for
// malformed JSON, a non-object, or a bos_token / eos_token that is neither a string nor {"content": string}.
absl::Status ParseSpecialTokensJson(absl::string_view json_text, const std::string& file, SpecialTokenNames* names);

struct TokenizerOptions {
  // --chat-template: a ChatTemplateName to render chat with instead of the model's own template. "" = the
  // model directory's (chat_template.jinja, else tokenizer_config.json's "chat_template"; Tulu when neither).
  std::string chat_template;
};

// Immutable after Load: every const method is safe to call from many threads at once.
class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Reads DIR/tokenizer.model. BOS/EOS come from DIR/tokenizer_config.json, then DIR/special_tokens_map.json
  // (which wins, as in Hugging Face), as token strings ("<s>") or {"content": "<s>"} objects mapped through the
  // vocabulary; a token named in neither falls back to the SentencePiece model's own id. generation_config.json
  // is never read: the Tulu release's says bos 0 / eos 1, which is wrong (the tokenizer says 1 / 2).
  // DIR may hold only tokenizer files. The chat template is chosen here (SelectChatTemplate).
  // Errors: NOT_FOUND when tokenizer.model is missing; INVALID_ARGUMENT for an unreadable model, malformed JSON,
  // a special token that is not in the vocabulary (naming the file), or a chat template tpserve cannot render
  // (naming --chat-template).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir,
                                                         const TokenizerOptions& options = {});

  int bos_id() const { return bos_id_; }  // -1 when the tokenizer has none
  int eos_id() const { return eos_id_; }
  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  const std::string& eos_token() const { return eos_token_; }  // e.g. "</s>"
  const std::string& bos_token() const { return bos_token_; }  // e.g. "<s>"
  ChatTemplateKind chat_template() const { return chat_template_; }

  // [BOS] + SentencePiece(text). SentencePiece adds its dummy-prefix "▁" (Llama: "Hello" -> "▁Hello").
  std::vector<int32_t> Encode(absl::string_view text, bool add_bos) const;
  // SentencePiece decode after dropping BOS, EOS and out-of-range ids (like HF skip_special_tokens for Llama,
  // where <unk> is kept as SentencePiece renders it). Invalid byte sequences become U+FFFD.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // The raw piece ("▁Hello", "<0x0A>", "<s>"); "" for an out-of-range id.
  std::string IdToPiece(int32_t id) const;
  // -1 when `piece` is not in the vocabulary.
  int32_t PieceToId(absl::string_view piece) const;

  // The chat rendered with chat_template() (see chat_template.h), template-inserted special tokens written as
  // their strings ("<s>", "</s>"); without the BOS that EncodeChat prepends.
  absl::StatusOr<std::string> RenderChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt) const;
  // The rendered chat tokenized the way Hugging Face's slow LlamaTokenizer (legacy, as the Llama 2 and Tulu
  // tokenizers are configured) tokenizes it, with one deliberate difference:
  //   - BOS is prepended unless the template itself starts with bos_token (Llama-2-chat, Vicuna), so Tulu,
  //     Zephyr and ChatML keep their BOS and no template gets two;
  //   - each bos_token / eos_token the template inserted becomes its id, and the text between them is encoded
  //     as its own SentencePiece segment (so "</s>\n" is 2, 29871 "▁", 13 "\n", as HF's legacy tokenizer does);
  //   - the difference: a "</s>" or "<s>" inside message content stays text (HF would turn it into the id,
  //     letting a user end a turn for the model).
  // With no template-inserted special token this is exactly [BOS] + Encode(RenderChat(...)).
  // scripts/make-chat-template-vectors.py states the same rules for the references the tests compare with.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(absl::Span<const ChatMessage> messages,
                                                  bool add_generation_prompt) const;

  // Decode table for IncrementalDetokenizer. nullptr for an out-of-range id.
  const TokenPiece* Piece(int32_t id) const {
    return id >= 0 && id < vocab_size() ? &pieces_[id] : nullptr;
  }
  // Whether SentencePiece drops the "▁" of the first piece of a sequence (add_dummy_prefix), and whether it
  // keeps dropping leading "▁" pieces until text appears (remove_extra_whitespaces). Probed at Load.
  bool strips_leading_space() const { return strips_leading_space_; }
  bool strips_all_leading_spaces() const { return strips_all_leading_spaces_; }

 private:
  Tokenizer();
  absl::Status BuildPieceTable();

  std::unique_ptr<sp_bridge::Processor> sp_;
  std::vector<TokenPiece> pieces_;  // [vocab_size]
  int bos_id_ = -1;
  int eos_id_ = -1;
  std::string eos_token_;
  std::string bos_token_;
  ChatTemplateKind chat_template_ = ChatTemplateKind::kTulu;
  bool strips_leading_space_ = true;
  bool strips_all_leading_spaces_ = false;
};

}  // namespace tpserve::coordinator
