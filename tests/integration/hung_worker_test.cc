// A worker that hangs (SIGSTOP) in the middle of streaming greedy requests, in a TP = 2 group served by
// `tpserve serve` (issue 15): the step times out (--step-timeout), the coordinator re-forms the group under a
// new generation at once, and the survivor leaves whatever it was blocked in (the step's collective on the hung
// peer) for that LoadCommand while the peer is still stopped. When the hung worker is then killed and
// restarted, the survivor abandons the rendezvous it was waiting in for the stopped peer (the newer
// generation's LoadCommand supersedes it) instead of waiting out the store's 120 s; the group re-forms and
// every request completes with exactly its fault-free ids. Before, a step timeout with every rank connected
// left the group not ready until --recovery-timeout ended the requests. Every wait is bounded.
#include <signal.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

const char* kPrompts[] = {"Once upon a time", "Lily and Tom", "The big dog", "One day, a little bird"};

std::vector<StreamOutcome> RunFour(ServerProcess& server, std::atomic<int>* seen) {
  std::vector<std::pair<std::string, int>> requests;
  for (int i = 0; i < 4; ++i) requests.emplace_back(kPrompts[i], 120 + 10 * i);
  return RunGreedyStreams(server, requests, seen, absl::Seconds(180));
}

// The worker of `rank` among the server's children (their order is unknown), from its command line; -1 if none.
pid_t WorkerOfRank(const ServerProcess& server, int rank) {
  for (pid_t pid : server.ChildPids()) {
    std::ifstream f(absl::StrCat("/proc/", pid, "/cmdline"));
    std::stringstream ss;
    ss << f.rdbuf();
    for (absl::string_view arg : absl::StrSplit(ss.str(), '\0')) {
      if (arg == absl::StrCat("--rank=", rank)) return pid;
    }
  }
  return -1;
}

// True when one line of the log holds every one of `parts`.
bool LogHasLine(const std::string& log, const std::vector<std::string>& parts) {
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    bool all = true;
    for (const auto& p : parts) all = all && absl::StrContains(line, p);
    if (all) return true;
  }
  return false;
}

TEST(HungWorkerTest, TheSurvivorTakesTheNextGenerationWhileItsPeerHangsAndEveryRequestReplays) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 2, {"--max_num_seqs=2", "--step_timeout=3", "--recovery_timeout=150"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  std::vector<StreamOutcome> clean = RunFour(server, nullptr);
  for (const auto& o : clean) ASSERT_TRUE(o.status.ok()) << o.status.error_message() << "\n" << server.LogTail();

  std::atomic<int> seen{0};
  std::vector<StreamOutcome> faulty;
  std::thread clients([&] { faulty = RunFour(server, &seen); });
  const pid_t rank0 = WorkerOfRank(server, 0);
  auto abandon = [&](const std::string& why) {
    if (rank0 > 0) kill(rank0, SIGKILL);  // SIGKILL ends a stopped process too
    server.Signal(SIGKILL);               // ends the streams, so the client thread can be joined
    clients.join();
    return why;
  };
  if (rank0 < 0) FAIL() << abandon("no worker with --rank=0 among the server's children");
  if (auto mid = server.WaitUntil([&] { return seen.load() >= 40; }, "40 streamed tokens"); !mid) {
    FAIL() << abandon(mid.message());
  }
  ASSERT_EQ(kill(rank0, SIGSTOP), 0);

  // Rank 0 is stopped: rank 1 must get to generation 2's LoadCommand anyway.
  if (auto reformed = server.WaitUntil(
          [&] {
            const std::string log = server.ReadLog();
            return LogHasLine(log, {"coordinator", "a step timed out; re-forming the group (generation 2)"}) &&
                   LogHasLine(log, {"worker[1]", "generation 2 LoadCommand received"});
          },
          "rank 1 taking generation 2's LoadCommand while rank 0 is stopped", absl::Seconds(60));
      !reformed) {
    FAIL() << abandon(reformed.message());
  }

  // Rank 0 dies; the launcher restarts it and generation 3 forms. Rank 1's generation 2 rendezvous (waiting for
  // the stopped rank 0) is abandoned when generation 3's LoadCommand arrives.
  ASSERT_EQ(kill(rank0, SIGKILL), 0);
  clients.join();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(faulty[i].status.ok()) << "request " << i << ": " << faulty[i].status.error_message() << "\n"
                                       << server.ReadLog();
    EXPECT_EQ(faulty[i].ids, clean[i].ids) << "request " << i;
  }
  const std::string log = server.ReadLog();
  EXPECT_TRUE(LogHasLine(log, {"worker[1]", "load failed", "was abandoned", "'g3/'"})) << log;
  EXPECT_NE(log.find("replaying"), std::string::npos) << log;
  EXPECT_EQ(server.Stop(), 0) << server.LogTail();
}

// SIGPIPE bit of /proc/<pid>/status's SigIgn mask (hex), or false when unreadable.
bool IgnoresSigpipe(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (!absl::StartsWith(line, "SigIgn:")) continue;
    const uint64_t mask = std::stoull(line.substr(7), nullptr, 16);
    return (mask >> (SIGPIPE - 1)) & 1;
  }
  return false;
}

// Gloo writes to peers with writev(2): a standalone worker (Kubernetes, or the one Auth/WorkerAuthTest starts)
// whose write to a dead peer won the race with the end-of-stream died of SIGPIPE, silently, instead of failing
// the collective. `tpserve serve`'s workers inherit its SIG_IGN; a standalone one must set it itself.
TEST(HungWorkerTest, AStandaloneWorkerIgnoresSigpipe) {
  ScopedTempDir dir("sigpipe");
  // The worker inherits the default action, whatever this test runner set (an ignored signal stays ignored
  // across exec).
  const auto previous = signal(SIGPIPE, SIG_DFL);
  // Nothing listens on the port: the worker keeps trying to register until it is killed.
  const pid_t worker = SpawnLogged({BinDir() + "/tpserve", "worker", "--coordinator=127.0.0.1:1", "--rank=0",
                                    "--world_size=2", "--connect_timeout=120"},
                                   dir.path + "/worker.log");
  signal(SIGPIPE, previous);
  ASSERT_GT(worker, 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  bool ignores = false;
  while (!(ignores = IgnoresSigpipe(worker)) && absl::Now() < deadline && kill(worker, 0) == 0) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(worker, SIGKILL);
  WaitExit(worker, absl::Seconds(10));
  EXPECT_TRUE(ignores) << "tpserve worker never ignored SIGPIPE; its log:\n" << ReadFileOrDie(dir.path + "/worker.log");
}

}  // namespace
}  // namespace tpserve::testing
