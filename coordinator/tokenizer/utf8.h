// Strict UTF-8 validation and decoding helpers shared by the chat template, the detokenizer and API
// validation.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace tpserve::coordinator {

// True when `text` is well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates (U+D800..U+DFFF),
// nothing above U+10FFFF, no truncated sequences. The empty string is valid.
bool IsValidUtf8(absl::string_view text);

// The number of bytes a sequence starting with lead byte `b` claims (1..4), or 0 when `b` cannot start a
// character (a continuation byte 0x80..0xBF or 0xF8..0xFF).
int Utf8SequenceLength(unsigned char b);

// Length (1..4) of the well-formed character at the start of `bytes`, or 0 when the bytes there do not form
// one (including when `bytes` is too short for the length its lead byte claims). Same rules as IsValidUtf8
// and as SentencePiece's decoder, which maps each byte that does not start a character to U+FFFD.
int ValidUtf8CharLength(absl::string_view bytes);

// `text` without the leading and trailing characters Python's str.strip() removes (str.isspace: U+0009..U+000D,
// U+001C..U+001F, U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
// Chat templates call .strip() on message content, so rendering them natively must strip the same set.
// `text` must be valid UTF-8.
absl::string_view StripPythonWhitespace(absl::string_view text);

// U+FFFD REPLACEMENT CHARACTER, UTF-8 encoded.
inline constexpr absl::string_view kUtf8ReplacementChar = "\xEF\xBF\xBD";

}  // namespace tpserve::coordinator
