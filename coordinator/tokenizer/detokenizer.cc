// Incremental detokenizer: SentencePiece's decode rules applied one piece at a time; see detokenizer.h.
#include "coordinator/tokenizer/detokenizer.h"

#include "coordinator/tokenizer/utf8.h"

namespace tpserve::coordinator {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt_ids)
    : tokenizer_(&tokenizer) {
  // Only the start-of-text state matters for what follows, and it is settled once text (or a dropped dummy
  // "▁") has appeared; stopping there keeps construction O(1) for real prompts.
  std::string scratch;
  for (int32_t id : prompt_ids) {
    if (any_text_ || dummy_space_seen_) break;
    Consume(id, &scratch);
  }
  // A prompt cut inside a character: those bytes belong to the prompt's text, not to the generation.
  if (!pending_bytes_.empty()) any_text_ = true;
  pending_bytes_.clear();
}

std::string IncrementalDetokenizer::Add(int32_t id) {
  ++num_tokens_;
  std::string out;
  Consume(id, &out);
  text_ += out;
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  DrainBytes(/*final=*/true, &out);
  text_ += out;
  return out;
}

void IncrementalDetokenizer::DrainBytes(bool final, std::string* out) {
  size_t pos = 0;
  const size_t start_size = out->size();
  while (pos < pending_bytes_.size()) {
    const absl::string_view rest = absl::string_view(pending_bytes_).substr(pos);
    const int claimed = Utf8SequenceLength(static_cast<unsigned char>(rest[0]));
    if (!final && claimed > 0 && rest.size() < static_cast<size_t>(claimed)) break;  // may still complete
    const int len = ValidUtf8CharLength(rest);
    if (len > 0) {
      out->append(rest.data(), len);
      pos += len;
    } else {
      // SentencePiece's rule: a byte that does not start a well-formed character is one U+FFFD.
      out->append(kUtf8ReplacementChar.data(), kUtf8ReplacementChar.size());
      pos += 1;
    }
  }
  pending_bytes_.erase(0, pos);
  if (out->size() > start_size) any_text_ = true;
}

void IncrementalDetokenizer::Consume(int32_t id, std::string* out) {
  const TokenPiece* piece = tokenizer_->Piece(id);
  if (piece == nullptr || id == tokenizer_->bos_id() || id == tokenizer_->eos_id()) return;
  if (piece->kind == TokenPiece::Kind::kByte) {
    pending_bytes_.push_back(static_cast<char>(piece->byte));
    DrainBytes(/*final=*/false, out);
    return;
  }
  // A non-byte piece ends a byte run: whatever is left of it can no longer complete.
  DrainBytes(/*final=*/true, out);
  if (dummy_space_seen_ || any_text_) at_start_ = false;
  absl::string_view text;
  switch (piece->kind) {
    case TokenPiece::Kind::kControl:
      dummy_space_seen_ = false;
      break;
    case TokenPiece::Kind::kUnknown:
      text = piece->text;
      dummy_space_seen_ = false;
      break;
    case TokenPiece::Kind::kText: {
      text = piece->text;
      bool dropped = false;
      if (at_start_ && piece->leading_space && tokenizer_->strips_leading_space()) {
        text.remove_prefix(1);
        dropped = true;
      }
      // With remove_extra_whitespaces SentencePiece keeps dropping leading "▁" until real text appears.
      dummy_space_seen_ = dropped && !tokenizer_->strips_all_leading_spaces();
      break;
    }
    case TokenPiece::Kind::kByte:
      break;  // handled above
  }
  if (!text.empty()) {
    out->append(text.data(), text.size());
    any_text_ = true;
  }
}

}  // namespace tpserve::coordinator
