// Streams generated token ids to text, emitting only complete UTF-8 characters.
#pragma once

#include <cstdint>
#include <string>

#include "absl/types/span.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace tpserve::coordinator {

// Turns a stream of generated ids into text chunks, one Add() per token, O(piece length) per call (no
// re-decoding of a window: SentencePiece's decode rules are applied piece by piece from Tokenizer::Piece()).
//
// Contract: Decode(prompt) + concat(all Add() outputs) + Flush() == Decode(prompt + generated), provided the
// prompt ends on a complete character (prompts come from valid UTF-8 text). So the first generated "▁word"
// after a prompt gives " word" (a real space), while for an empty prompt (or BOS only) it gives "word" exactly
// as Decode(generated) does; in both cases, when the first generated piece has no leading "▁" the output equals
// Decode(generated). Byte-fallback pieces are held back until they form a whole character: <0xE2><0x82><0xAC>
// yields "", "", "€". Bytes that cannot form a character become U+FFFD, one per byte, as SentencePiece does.
// BOS/EOS and out-of-range ids produce nothing (as in Tokenizer::Decode).
//
// Not thread-safe (one per sequence). The Tokenizer must outlive it.
class IncrementalDetokenizer {
 public:
  // `prompt_ids` give the context for SentencePiece's start-of-text space rule; only a prefix up to the first
  // visible text is examined.
  IncrementalDetokenizer(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt_ids);

  // Appends one generated id; returns the newly completed text (valid UTF-8, possibly empty).
  std::string Add(int32_t id);
  // End of the sequence: returns held-back bytes, each incomplete byte as U+FFFD. Add() may follow.
  std::string Flush();

  // Everything returned by Add() and Flush() so far, concatenated.
  const std::string& text() const { return text_; }
  // Generated ids seen by Add().
  int64_t num_tokens() const { return num_tokens_; }

 private:
  // Applies one id to the decode state, appending any finished text to *out.
  void Consume(int32_t id, std::string* out);
  // Emits the characters the pending bytes already decide; with `final`, also the undecided ones as U+FFFD.
  void DrainBytes(bool final, std::string* out);

  const Tokenizer* tokenizer_;
  std::string pending_bytes_;     // byte-fallback bytes not yet emitted (at most 3 after DrainBytes(false))
  bool at_start_ = true;          // SentencePiece's is_bos_ws: the next "▁" may still be the dummy prefix
  bool dummy_space_seen_ = false; // the previous text piece had its leading "▁" dropped
  bool any_text_ = false;         // some visible text (prompt included) has been produced
  std::string text_;
  int64_t num_tokens_ = 0;
};

}  // namespace tpserve::coordinator
