// Minimal leveled logging to stderr (Abseil 20220623 has no absl/log). One line per call, thread-safe.
// TP_LOG(INFO) << "loaded " << n << " tensors";   TP_CHECK(cond) << "why";
#pragma once

#include <sstream>
#include <string>

namespace tpserve {

enum class LogSeverity { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Messages below this severity are dropped. Default kInfo; TPSERVE_LOG_LEVEL is not read (flags only).
void SetMinLogSeverity(LogSeverity s);
LogSeverity MinLogSeverity();
// Prefix every line with this process' role, e.g. "coordinator" or "worker[1]".
void SetLogTag(const std::string& tag);

class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();  // writes the line; aborts for kFatal
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream when the level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace tpserve

#define TP_LOG_SEVERITY_DEBUG ::tpserve::LogSeverity::kDebug
#define TP_LOG_SEVERITY_INFO ::tpserve::LogSeverity::kInfo
#define TP_LOG_SEVERITY_WARNING ::tpserve::LogSeverity::kWarning
#define TP_LOG_SEVERITY_ERROR ::tpserve::LogSeverity::kError
#define TP_LOG_SEVERITY_FATAL ::tpserve::LogSeverity::kFatal

#define TP_LOG(level)                                                        \
  (TP_LOG_SEVERITY_##level < ::tpserve::MinLogSeverity())                   \
      ? (void)0                                                             \
      : ::tpserve::LogVoidify() &                                           \
            ::tpserve::LogMessage(TP_LOG_SEVERITY_##level, __FILE__, __LINE__).stream()

// Invariants only; bad input returns a Status instead.
#define TP_CHECK(cond)                                                                    \
  (cond) ? (void)0                                                                        \
         : ::tpserve::LogVoidify() &                                                      \
               ::tpserve::LogMessage(::tpserve::LogSeverity::kFatal, __FILE__, __LINE__) \
                       .stream()                                                          \
                   << "Check failed: " #cond " "
