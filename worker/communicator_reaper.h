// Tears down communicators that a new group generation replaced, on a thread of its own, so that the worker's
// control loop goes straight on to the next rendezvous. Gloo's teardown waits on its event loop's ticks and
// NCCL's may wait for its stream; neither may hold up the LoadCommand that replaced them (issue 15: a survivor
// must handle generation N+1 promptly whatever generation N was blocked in). Retire() a communicator after
// Abort(), so nothing of it still waits on a peer. A teardown that lasts longer than `slow` is logged every
// `slow` while it lasts (a PhaseWatchdog). The thread is joined by the destructor, after every retired
// communicator is gone. Thread-safe.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/phase_watchdog.h"

namespace tpserve::worker {

class CommunicatorReaper {
 public:
  // `report`: where the watchdog's lines go (tests); default the log.
  explicit CommunicatorReaper(absl::Duration slow = absl::Seconds(5),
                              std::function<void(const std::string&)> report = nullptr);
  ~CommunicatorReaper();  // destroys what is left, then joins
  CommunicatorReaper(const CommunicatorReaper&) = delete;
  CommunicatorReaper& operator=(const CommunicatorReaper&) = delete;

  // Destroys `comm` soon, off the caller's thread. `label` names it in log lines ("generation 3's gloo").
  void Retire(std::unique_ptr<comm::Communicator> comm, std::string label);
  // Blocks until every communicator retired so far is destroyed (tests; a worker never needs to wait).
  void Drain();

 private:
  struct Retired {
    std::unique_ptr<comm::Communicator> comm;
    std::string label;
  };
  void Loop();

  PhaseWatchdog watchdog_;
  absl::Mutex mu_;
  std::deque<Retired> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // a teardown is running
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the fields it reads
};

}  // namespace tpserve::worker
