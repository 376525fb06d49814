// Implementation of worker/communicator_reaper.h.
#include "worker/communicator_reaper.h"

#include <utility>

namespace tpserve::worker {
namespace {

PhaseWatchdog::Options WatchdogOptions(absl::Duration slow, std::function<void(const std::string&)> report) {
  PhaseWatchdog::Options o;
  o.subject = "communicator reaper";
  o.period = slow;
  o.report = std::move(report);
  return o;
}

}  // namespace

CommunicatorReaper::CommunicatorReaper(absl::Duration slow, std::function<void(const std::string&)> report)
    : watchdog_(WatchdogOptions(slow, std::move(report))), thread_([this] { Loop(); }) {}

CommunicatorReaper::~CommunicatorReaper() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void CommunicatorReaper::Retire(std::unique_ptr<comm::Communicator> comm, std::string label) {
  if (comm == nullptr) return;
  absl::MutexLock lock(&mu_);
  queue_.push_back({std::move(comm), std::move(label)});
}

void CommunicatorReaper::Drain() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !busy_; };
  mu_.Await(absl::Condition(&idle));
}

void CommunicatorReaper::Loop() {
  while (true) {
    Retired next;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stop_, and nothing left to destroy
      next = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    watchdog_.Enter("tearing down the " + next.label + " communicator");
    next.comm.reset();
    watchdog_.Idle();
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

}  // namespace tpserve::worker
