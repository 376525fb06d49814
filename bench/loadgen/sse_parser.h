// Incremental parser for Server-Sent Events as OpenAI-compatible servers stream them: bytes arrive split
// anywhere (inside a line, between "\r" and "\n"), events come out whole. Follows the WHATWG event-stream rules
// for the fields that matter here: lines end in "\n", "\r\n" or "\r"; "data:" lines of one event are joined
// with "\n" (one optional space after the colon is dropped); a blank line ends the event; comments (":...")
// and other fields (event, id, retry) are ignored. Not thread-safe: one parser per stream.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "absl/strings/string_view.h"

namespace tpserve::bench {

class SseParser {
 public:
  // Called with each complete event's data; returning false stops parsing (Feed then returns false).
  using EventFn = std::function<bool(const std::string& data)>;

  // A line longer than this fails the stream instead of growing without bound.
  static constexpr size_t kMaxLineBytes = 16 << 20;

  // Parses `bytes`; false when on_event asked to stop or a line grew past kMaxLineBytes (overflowed()).
  bool Feed(absl::string_view bytes, const EventFn& on_event);
  bool overflowed() const { return overflowed_; }
  // Whether bytes of an unfinished event are buffered (a stream that ends now was cut mid-event).
  bool pending() const { return !line_.empty() || has_data_; }

 private:
  bool EndLine(const EventFn& on_event);

  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool after_cr_ = false;  // the last byte was "\r": a following "\n" belongs to the same line end
  bool overflowed_ = false;
};

}  // namespace tpserve::bench
