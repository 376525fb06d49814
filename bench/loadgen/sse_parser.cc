// Implementation of bench/loadgen/sse_parser.h.
#include "bench/loadgen/sse_parser.h"

namespace tpserve::bench {

bool SseParser::Feed(absl::string_view bytes, const EventFn& on_event) {
  if (overflowed_) return false;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (c == '\n' && after_cr_) {
      after_cr_ = false;
      continue;
    }
    after_cr_ = c == '\r';
    if (c == '\n' || c == '\r') {
      if (!EndLine(on_event)) return false;
      continue;
    }
    // Copy the run of ordinary bytes at once: chunks are mostly one long JSON line.
    size_t end = i;
    while (end < bytes.size() && bytes[end] != '\n' && bytes[end] != '\r') ++end;
    if (line_.size() + (end - i) > kMaxLineBytes) {
      overflowed_ = true;
      return false;
    }
    line_.append(bytes.data() + i, end - i);
    i = end - 1;
  }
  return true;
}

bool SseParser::EndLine(const EventFn& on_event) {
  std::string line;
  line.swap(line_);
  if (line.empty()) {  // blank line: dispatch
    if (!has_data_) return true;
    std::string data;
    data.swap(data_);
    has_data_ = false;
    return on_event(data);
  }
  if (line[0] == ':') return true;  // comment (keep-alive pings)
  const size_t colon = line.find(':');
  const absl::string_view field = absl::string_view(line).substr(0, colon);
  if (field != "data") return true;
  absl::string_view value;
  if (colon != std::string::npos) {
    value = absl::string_view(line).substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (has_data_) data_.push_back('\n');
  data_.append(value.data(), value.size());
  has_data_ = true;
  return true;
}

}  // namespace tpserve::bench
