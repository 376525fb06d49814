// SseParser against the event-stream rules: the same stream split at every byte position gives the same events.
#include "bench/loadgen/sse_parser.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tpserve::bench {
namespace {

std::vector<std::string> ParseInPieces(const std::string& stream, size_t split_a, size_t split_b) {
  SseParser p;
  std::vector<std::string> events;
  auto on = [&](const std::string& d) {
    events.push_back(d);
    return true;
  };
  EXPECT_TRUE(p.Feed(absl::string_view(stream).substr(0, split_a), on));
  EXPECT_TRUE(p.Feed(absl::string_view(stream).substr(split_a, split_b - split_a), on));
  EXPECT_TRUE(p.Feed(absl::string_view(stream).substr(split_b), on));
  EXPECT_FALSE(p.pending());
  return events;
}

TEST(SseParserTest, EverySplitGivesTheSameEvents) {
  // LF, CRLF and lone CR line ends; a comment; an event/id field; a two-line data event; no space after colon.
  const std::string stream =
      ": ping\n\n"
      "data: {\"a\":1}\n\n"
      "event: message\r\nid: 7\r\ndata: {\"b\":\r\ndata:2}\r\n\r\n"
      "data:[DONE]\r\r";
  const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":\n2}", "[DONE]"};
  for (size_t a = 0; a <= stream.size(); ++a) {
    for (size_t b = a; b <= stream.size(); b += 3) {
      ASSERT_EQ(ParseInPieces(stream, a, b), want) << "split at " << a << ", " << b;
    }
  }
}

TEST(SseParserTest, UnfinishedEventIsPendingAndStopPropagates) {
  SseParser p;
  int n = 0;
  auto stop_after_first = [&](const std::string&) { return ++n < 1; };
  EXPECT_FALSE(p.Feed("data: x\n\ndata: y\n\n", stop_after_first));
  EXPECT_EQ(n, 1);

  SseParser q;
  EXPECT_TRUE(q.Feed("data: {\"cut", [](const std::string&) { return true; }));
  EXPECT_TRUE(q.pending());
  EXPECT_FALSE(q.overflowed());
}

}  // namespace
}  // namespace tpserve::bench
