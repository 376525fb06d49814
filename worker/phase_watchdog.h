// Says what a worker thread is blocked in. The thread names each phase it enters (a step, a load's rendezvous,
// writing a reply, tearing down a communicator) and goes back to idle in between; the watchdog's own thread
// reports, every `period`, a phase that has lasted longer than `period`, with a detail the owner supplies (the
// collective in flight). Why: after a peer's SIGKILL a survivor once stayed silent for the whole recovery
// timeout (issue 15), and nothing told whether it waited in a collective, in the old communicator's teardown,
// or never got the LoadCommand. Thread-safe.
#pragma once

#include <functional>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tpserve::worker {

class PhaseWatchdog {
 public:
  struct Options {
    std::string subject = "control loop";  // who is watched, for the report
    absl::Duration period = absl::Seconds(5);
    // Appended to a report when non-empty; called on the watchdog's thread, without its lock held.
    std::function<std::string()> detail;
    // Receives each report ("control loop still in step 9 after 10s; ..."); default: an INFO log line.
    std::function<void(const std::string&)> report;
  };

  explicit PhaseWatchdog(Options options);
  ~PhaseWatchdog();  // stops and joins its thread
  PhaseWatchdog(const PhaseWatchdog&) = delete;
  PhaseWatchdog& operator=(const PhaseWatchdog&) = delete;

  // The watched thread starts `phase` now (replacing the one it was in).
  void Enter(std::string phase);
  // The watched thread waits for work: nothing to report.
  void Idle() { Enter(""); }
  std::string phase() const;  // "" when idle

 private:
  void Loop();

  const Options options_;
  mutable absl::Mutex mu_;
  std::string phase_ ABSL_GUARDED_BY(mu_);
  absl::Time since_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the fields it reads
};

}  // namespace tpserve::worker
