// Strict UTF-8 checks; see utf8.h.
#include "coordinator/tokenizer/utf8.h"

#include <cstdint>

namespace tpserve::coordinator {
namespace {

bool IsTrail(unsigned char b) { return (b & 0xC0) == 0x80; }

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

}  // namespace tpserve::coordinator
