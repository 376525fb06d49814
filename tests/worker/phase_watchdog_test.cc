// PhaseWatchdog and CommunicatorReaper: what the worker's control loop and its communicator teardown report
// when they stay in one phase (issue 15: a survivor that stayed silent for a minute left no clue).
#include "worker/phase_watchdog.h"

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/communicator_reaper.h"

namespace tpserve::worker {
namespace {

// Collects reports; waits (bounded) for one that contains a string.
class Reports {
 public:
  void Add(const std::string& line) {
    absl::MutexLock lock(&mu_);
    lines_.push_back(line);
  }
  // The first report containing `needle`, or "" when none came within 30 s.
  std::string WaitFor(const std::string& needle) {
    absl::MutexLock lock(&mu_);
    std::string found;
    auto has = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& l : lines_) {
        if (l.find(needle) != std::string::npos) {
          found = l;
          return true;
        }
      }
      return false;
    };
    mu_.AwaitWithTimeout(absl::Condition(&has), absl::Seconds(30));
    return found;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

PhaseWatchdog::Options FastOptions(Reports* reports, std::function<std::string()> detail = nullptr) {
  PhaseWatchdog::Options o;
  o.period = absl::Milliseconds(20);
  o.detail = std::move(detail);
  o.report = [reports](const std::string& line) { reports->Add(line); };
  return o;
}

TEST(PhaseWatchdogTest, AReportNamesTheSubjectThePhaseAndTheDetail) {
  Reports reports;
  PhaseWatchdog watchdog(FastOptions(&reports, [] { return std::string("collective in flight: all-reduce #3"); }));
  watchdog.Enter("step 9 (generation 1)");
  EXPECT_EQ(watchdog.phase(), "step 9 (generation 1)");
  const std::string line = reports.WaitFor("step 9 (generation 1)");
  ASSERT_FALSE(line.empty()) << "no report of a phase that lasted many periods";
  EXPECT_EQ(line.rfind("control loop still in step 9 (generation 1) after ", 0), 0u) << line;
  EXPECT_NE(line.find("; collective in flight: all-reduce #3"), std::string::npos) << line;
  watchdog.Idle();
  EXPECT_EQ(watchdog.phase(), "");
  // The next phase is reported under its own name.
  watchdog.Enter("load generation 2: gloo rendezvous (store prefix 'g2/')");
  EXPECT_FALSE(reports.WaitFor("load generation 2: gloo rendezvous").empty());
}

// A communicator whose teardown blocks until the test lets it go, as Gloo's would on a stuck event loop.
class BlockingCommunicator : public comm::Communicator {
 public:
  explicit BlockingCommunicator(absl::Notification* release) : release_(release) {}
  ~BlockingCommunicator() override { release_->WaitForNotification(); }
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  std::string name() const override { return "blocking"; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllGather(const float*, size_t, float*) override { return absl::OkStatus(); }

 private:
  absl::Notification* release_;
};

// Retire() returns at once even when the teardown blocks (the control loop goes on to the next rendezvous),
// and the reaper's watchdog names the communicator while its teardown lasts.
TEST(CommunicatorReaperTest, RetireDoesNotWaitForABlockedTeardownWhichIsReported) {
  absl::Notification release;
  Reports reports;
  {
    CommunicatorReaper reaper(absl::Milliseconds(20), [&](const std::string& line) { reports.Add(line); });
    reaper.Retire(std::make_unique<BlockingCommunicator>(&release), "generation 1's blocking");
    reaper.Retire(nullptr, "nothing");  // harmless
    const std::string line = reports.WaitFor("generation 1's blocking");
    EXPECT_EQ(line.rfind("communicator reaper still in tearing down the generation 1's blocking communicator", 0), 0u)
        << line;
    release.Notify();
    reaper.Drain();
  }  // joins
}

}  // namespace
}  // namespace tpserve::worker
