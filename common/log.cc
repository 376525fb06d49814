// Implementation of common/log.h: timestamped single-line writes to stderr.
#include "common/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace tpserve {
namespace {
std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};
std::mutex g_tag_mu;
std::string& Tag() {
  static std::string* tag = new std::string("tpserve");
  return *tag;
}
const char* SeverityLetter(LogSeverity s) {
  switch (s) {
    case LogSeverity::kDebug: return "D";
    case LogSeverity::kInfo: return "I";
    case LogSeverity::kWarning: return "W";
    case LogSeverity::kError: return "E";
    case LogSeverity::kFatal: return "F";
  }
  return "?";
}
}  // namespace

void SetMinLogSeverity(LogSeverity s) { g_min_severity.store(static_cast<int>(s)); }
LogSeverity MinLogSeverity() { return static_cast<LogSeverity>(g_min_severity.load()); }
void SetLogTag(const std::string& tag) {
  std::lock_guard<std::mutex> lock(g_tag_mu);
  Tag() = tag;
}

LogMessage::LogMessage(LogSeverity severity, const char* file, int line) : severity_(severity) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  const char* base = std::strrchr(file, '/');
  std::string tag;
  {
    std::lock_guard<std::mutex> lock(g_tag_mu);
    tag = Tag();
  }
  char msbuf[8];
  std::snprintf(msbuf, sizeof(msbuf), ".%03dZ", ms);
  stream_ << SeverityLetter(severity) << " " << buf << msbuf << " " << tag << " "
          << (base ? base + 1 : file) << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  std::string s = stream_.str();
  std::fwrite(s.data(), 1, s.size(), stderr);
  std::fflush(stderr);
  if (severity_ == LogSeverity::kFatal) std::abort();
}

}  // namespace tpserve
