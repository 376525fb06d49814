// Implementation of worker/phase_watchdog.h.
#include "worker/phase_watchdog.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace tpserve::worker {

PhaseWatchdog::PhaseWatchdog(Options options)
    : options_(std::move(options)), thread_([this] { Loop(); }) {}

PhaseWatchdog::~PhaseWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void PhaseWatchdog::Enter(std::string phase) {
  absl::MutexLock lock(&mu_);
  phase_ = std::move(phase);
  since_ = absl::Now();
}

std::string PhaseWatchdog::phase() const {
  absl::MutexLock lock(&mu_);
  return phase_;
}

void PhaseWatchdog::Loop() {
  while (true) {
    std::string phase;
    absl::Duration in_phase;
    {
      absl::MutexLock lock(&mu_);
      // Wakes for stop only; the phase is looked at once per period.
      mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.period);
      if (stop_) return;
      if (phase_.empty()) continue;
      in_phase = absl::Now() - since_;
      if (in_phase < options_.period) continue;
      phase = phase_;
    }
    std::string line = absl::StrCat(options_.subject, " still in ", phase, " after ",
                                    absl::FormatDuration(absl::Trunc(in_phase, absl::Milliseconds(100))));
    if (options_.detail) {
      const std::string detail = options_.detail();
      if (!detail.empty()) absl::StrAppend(&line, "; ", detail);
    }
    if (options_.report) {
      options_.report(line);
    } else {
      TP_LOG(INFO) << line;
    }
  }
}

}  // namespace tpserve::worker
