// Strict UTF-8 checks; see utf8.h.
#include "coordinator/tokenizer/utf8.h"

#include <cstdint>

namespace tpserve::coordinator {
namespace {

bool IsTrail(unsigned char b) { return (b & 0xC0) == 0x80; }

bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// The code point of the well-formed character of `len` bytes at `s`.
uint32_t DecodeChar(const unsigned char* s, int len) {
  if (len == 1) return s[0];
  uint32_t cp = s[0] & (0x7F >> len);
  for (int i = 1; i < len; ++i) cp = (cp << 6) | (s[i] & 0x3F);
  return cp;
}

}  // namespace

int Utf8SequenceLength(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 0;
}

int ValidUtf8CharLength(absl::string_view bytes) {
  if (bytes.empty()) return 0;
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const int len = Utf8SequenceLength(s[0]);
  if (len == 0 || bytes.size() < static_cast<size_t>(len)) return 0;
  if (len == 1) return 1;
  uint32_t cp = s[0] & (0x7F >> len);
  for (int i = 1; i < len; ++i) {
    if (!IsTrail(s[i])) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinForLength[len]) return 0;             // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;        // UTF-16 surrogate
  if (cp > 0x10FFFF) return 0;                        // beyond Unicode
  return len;
}

bool IsValidUtf8(absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {  // fast path for ASCII
      ++pos;
      continue;
    }
    const int len = ValidUtf8CharLength(text.substr(pos));
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

absl::string_view StripPythonWhitespace(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t begin = 0, end = text.size();
  while (begin < end) {
    const int len = ValidUtf8CharLength(text.substr(begin, end - begin));
    if (len == 0 || !IsPythonSpace(DecodeChar(s + begin, len))) break;
    begin += len;
  }
  while (end > begin) {
    size_t start = end - 1;  // back up to the lead byte of the last character
    while (start > begin && IsTrail(s[start])) --start;
    const int len = ValidUtf8CharLength(text.substr(start, end - start));
    if (len == 0 || static_cast<size_t>(len) != end - start || !IsPythonSpace(DecodeChar(s + start, len))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

}  // namespace tpserve::coordinator
