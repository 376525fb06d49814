// `tpserve serve`: the coordinator plus --tp local worker processes (this binary's `worker` command), which it
// supervises: a worker that dies is restarted (--restart-workers) and the group re-forms; SIGTERM drains.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cli/commands.h"
#include "cli/server_flags.h"
#include "cli/shared_flags.h"
#include "common/cluster_auth.h"
#include "common/log.h"

ABSL_FLAG(bool, restart_workers, true, "serve: restart a worker process that dies (the group re-forms)");
ABSL_FLAG(std::string, worker_dump_dir, "", "serve: debug: rank 0 writes each step's logits here");

namespace tpserve::cli {
namespace {

class WorkerSupervisor {
 public:
  WorkerSupervisor(int world_size, std::string coordinator, std::string device, int threads, std::string isa,
                   std::string dump_dir, bool restart, std::string token_file)
      : world_size_(world_size),
        coordinator_(std::move(coordinator)),
        device_(std::move(device)),
        threads_(threads),
        isa_(std::move(isa)),
        dump_dir_(std::move(dump_dir)),
        restart_(restart),
        token_file_(std::move(token_file)),
        pids_(world_size, -1) {}

  absl::Status Start() {
    for (int r = 0; r < world_size_; ++r) {
      absl::Status s = Spawn(r);
      if (!s.ok()) return s;
    }
    reaper_ = std::thread([this] { ReapLoop(); });
    return absl::OkStatus();
  }

  // Waits for the workers to exit (the coordinator told them to), then kills stragglers.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu_);
        bool any = false;
        for (pid_t p : pids_) any |= p > 0;
        if (!any) break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    {
      absl::MutexLock lock(&mu_);
      for (pid_t p : pids_) {
        if (p > 0) kill(p, SIGKILL);
      }
    }
    if (reaper_.joinable()) reaper_.join();
  }

 private:
  absl::Status Spawn(int rank) {
    std::string dev = device_;
    if (device_ == "cuda") dev = absl::StrCat("cuda:", rank);
    std::vector<std::string> args = {SelfExe(),
                                     "worker",
                                     absl::StrCat("--coordinator=", coordinator_),
                                     absl::StrCat("--rank=", rank),
                                     absl::StrCat("--world_size=", world_size_),
                                     absl::StrCat("--device=", dev),
                                     absl::StrCat("--threads=", threads_),
                                     absl::StrCat("--cpu_isa=", isa_),
                                     "--comm_host=127.0.0.1"};
    if (!dump_dir_.empty() && rank == 0) args.push_back(absl::StrCat("--dump_dir=", dump_dir_));
    args.push_back(absl::StrCat("--cluster_token_file=", token_file_));
    for (const char* f : {"cluster_ca", "cluster_cert", "cluster_key"}) {
      std::string v = f == std::string("cluster_ca")     ? absl::GetFlag(FLAGS_cluster_ca)
                      : f == std::string("cluster_cert") ? absl::GetFlag(FLAGS_cluster_cert)
                                                         : absl::GetFlag(FLAGS_cluster_key);
      if (!v.empty()) args.push_back(absl::StrCat("--", f, "=", v));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return absl::InternalError("fork failed");
    if (pid > 0) setpgid(pid, pid);  // the child does too (below): whichever runs first
    if (pid == 0) {
      // A worker never outlives its launcher, even after SIGKILL of the launcher.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      // Its own process group: Ctrl-C in a terminal (or `timeout`, or kill -- -PGID) signals the launcher's
      // group, and the launcher drains and then shuts the workers down in order. Workers killed by the same
      // signal would leave the in-flight requests nothing to finish on.
      setpgid(0, 0);
      // NCCL's bootstrap and proxy sockets bind the interface NCCL_SOCKET_IFNAME names (else the first
      // non-loopback one): keep them on loopback like everything else a local worker listens on.
      setenv("NCCL_SOCKET_IFNAME", "lo", /*overwrite=*/0);
      sigset_t none;
      sigemptyset(&none);
      pthread_sigmask(SIG_SETMASK, &none, nullptr);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    absl::MutexLock lock(&mu_);
    pids_[rank] = pid;
    if (stopping_) {
      // Stop() began while this restart was forking and may have looked at pids_ already.
      kill(pid, SIGKILL);
      return absl::OkStatus();
    }
    TP_LOG(INFO) << "started worker rank " << rank << " (pid " << pid << ", " << dev << ")";
    return absl::OkStatus();
  }

  void ReapLoop() {
    while (true) {
      int status = 0;
      pid_t pid = waitpid(-1, &status, 0);
      if (pid < 0) {
        {
          absl::MutexLock lock(&mu_);
          if (stopping_) return;
        }
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      int rank = -1;
      bool restart = false;
      {
        absl::MutexLock lock(&mu_);
        for (int r = 0; r < world_size_; ++r) {
          if (pids_[r] == pid) rank = r;
        }
        if (rank < 0) continue;
        pids_[rank] = -1;
        // Exit status 0 means the coordinator told the worker to shut down: not a failure to repair.
        const bool clean_exit = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        restart = restart_ && !stopping_ && !clean_exit;
        bool all_gone = true;
        for (pid_t p : pids_) all_gone &= p <= 0;
        if (stopping_ && all_gone) return;
      }
      std::string how = WIFSIGNALED(status) ? absl::StrCat("killed by signal ", WTERMSIG(status))
                                            : absl::StrCat("exited with status ", WEXITSTATUS(status));
      if (restart) {
        TP_LOG(WARNING) << "worker rank " << rank << " (pid " << pid << ") " << how << "; restarting it";
        absl::SleepFor(absl::Milliseconds(500));
        bool stopping;
        {
          absl::MutexLock lock(&mu_);
          stopping = stopping_;
        }
        if (!stopping && !Spawn(rank).ok()) TP_LOG(ERROR) << "could not restart worker rank " << rank;
      } else {
        TP_LOG(INFO) << "worker rank " << rank << " (pid " << pid << ") " << how;
      }
    }
  }

  const int world_size_;
  const std::string coordinator_;
  const std::string device_;
  const int threads_;
  const std::string isa_;
  const std::string dump_dir_;
  const bool restart_;
  const std::string token_file_;  // --cluster-token-file every worker gets
  absl::Mutex mu_;
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

// A fresh cluster token for this run's own workers, in a private directory (0700, file 0600): on one machine
// the worker plane is on loopback, and the token also keeps other local processes from taking a rank.
class EphemeralClusterToken {
 public:
  absl::StatusOr<std::string> Create() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/tpserve-cluster-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create a private directory for the cluster token under ",
                                              tmpl, ": ", std::strerror(errno)));
    }
    dir_ = tmpl;
    path_ = dir_ + "/cluster-token";
    token_ = cluster_auth::ToHex(cluster_auth::RandomNonce());
    int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, token_.data(), token_.size()) != static_cast<ssize_t>(token_.size())) {
      if (fd >= 0) close(fd);
      return absl::InternalError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
    }
    close(fd);
    return token_;
  }
  ~EphemeralClusterToken() {
    if (!path_.empty()) unlink(path_.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
  std::string token_;
};

}  // namespace

int ServeCommand() {
  auto o = CoordinatorOptionsFromFlags();
  if (!o.ok()) {
    std::fprintf(stderr, "tpserve serve: %s\n", std::string(o.status().message()).c_str());
    return 2;
  }
  if (o->model_dir.empty()) {
    o->model_dir = DefaultModelDir();
    std::fprintf(stderr,
                 "tpserve serve: no --model given: serving the generated RANDOM-WEIGHT model at %s.\n"
                 "  Its output is meaningless text; it exists so tpserve runs out of the box.\n"
                 "  For real answers pass --model /path/to/tulu-v2.5-dpo-13b (see README).\n",
                 o->model_dir.c_str());
    if (EnsureDefaultModel(o->model_dir) != 0) return 1;
  }
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "tpserve serve: --device must be cpu or cuda\n");
    return 2;
  }
  const int tp = o->group.world_size;
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / tp);
  o->group.threads = threads;
  // Local workers talk to the coordinator over loopback, and prove they are this run's own (a cluster token:
  // the one given, else a fresh one), so no other process can take a rank even on this machine.
  if (o->worker_host == "0.0.0.0") o->worker_host = "127.0.0.1";
  EphemeralClusterToken ephemeral;
  std::string token_file = absl::GetFlag(FLAGS_cluster_token_file);
  if (token_file.empty()) {
    auto token = ephemeral.Create();
    if (!token.ok()) {
      std::fprintf(stderr, "tpserve serve: %s\n", std::string(token.status().message()).c_str());
      return 1;
    }
    o->cluster_token = *token;
    token_file = ephemeral.path();
  }

  std::unique_ptr<WorkerSupervisor> supervisor;
  CoordinatorHooks hooks;
  hooks.on_started = [&](coordinator::CoordinatorServer& server) -> absl::Status {
    supervisor = std::make_unique<WorkerSupervisor>(
        tp, absl::StrCat("127.0.0.1:", server.worker_port()), device, threads, absl::GetFlag(FLAGS_cpu_isa),
        absl::GetFlag(FLAGS_worker_dump_dir), absl::GetFlag(FLAGS_restart_workers), token_file);
    return supervisor->Start();
  };
  hooks.on_exit = [&] {
    if (supervisor) supervisor->Stop();
  };
  return RunCoordinator(std::move(*o), hooks);
}

}  // namespace tpserve::cli
