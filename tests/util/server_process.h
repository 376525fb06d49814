// Starts a real `tpserve serve` process on 127.0.0.1 with ephemeral ports for integration tests, and waits on
// readiness (the port file, then gRPC health SERVING), never on sleeps. The destructor stops it (SIGTERM, then
// SIGKILL after a grace period).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "generation.grpc.pb.h"
#include "gtest/gtest.h"

namespace tpserve::testing {

struct ServerOptions {
  std::string model_dir;
  int tp = 1;
  std::vector<std::string> extra_flags;  // e.g. "--max_num_seqs=2"
  absl::Duration ready_timeout = absl::Seconds(180);
  std::string tls_ca;   // when the public API runs TLS: the CA that signed its certificate
  bool own_process_group = false;  // the server leads a new process group (SignalGroup reaches it and its group)
  bool default_worker_host = false;  // leave --worker_host at serve's default (else 127.0.0.1 is passed)
  std::string command = "serve";     // or "coordinator": then the test starts the workers itself
  bool wait_for_serving = true;      // false: Start() returns once the ports are bound
};

class ServerProcess {
 public:
  explicit ServerProcess(ServerOptions options);
  ~ServerProcess();

  // Spawns the server and waits until health says SERVING.
  absl::Status Start();
  // SIGTERM and wait for exit; returns the exit status (or -1 when killed after the timeout).
  int Stop(absl::Duration timeout = absl::Seconds(30));
  void Signal(int sig);
  // kill(-pid, sig): the server's whole process group, as Ctrl-C in a terminal does. Needs own_process_group.
  void SignalGroup(int sig);
  // Exit status if the process ended (non-blocking), else -1.
  int PollExit();

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  int worker_port() const { return worker_port_; }
  int http_port() const { return http_port_; }  // the OpenAI HTTP API; -1 when off
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& log_path() const { return log_path_; }
  std::string ReadLog() const;
  // The log's last `lines` lines, for failure messages.
  std::string LogTail(int lines = 40) const;
  // Polls `condition` until it holds. Fails at once, with the log's last lines, when the server exited, and
  // after `timeout` otherwise; `what` names the awaited thing in the message. Never sleeps past a fault.
  ::testing::AssertionResult WaitUntil(const std::function<bool()>& condition, const std::string& what,
                                       absl::Duration timeout = absl::Seconds(120));
  std::unique_ptr<tpserve::v1::Generation::Stub> NewStub() const;
  std::shared_ptr<grpc::Channel> NewChannel() const;  // TLS when options.tls_ca is set

  // grpc.health.v1 Check of the overall server: "SERVING", "NOT_SERVING", or an error string.
  std::string HealthStatus() const;
  // Waits until HealthStatus() == want or timeout.
  bool WaitForHealth(const std::string& want, absl::Duration timeout) const;
  // GET http://127.0.0.1:<metrics_port><path>; returns the body, status in *code.
  std::string HttpGet(const std::string& path, int* code = nullptr) const;

  // Worker pids (children of the server), rank order unknown: from /proc.
  std::vector<pid_t> ChildPids() const;

 private:
  ServerOptions options_;
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int worker_port_ = 0;
  int http_port_ = -1;
  int exit_status_ = -1;
};

// Spawns `args` (argv[0] a path) with stdout and stderr appended to log_path; it dies with the test.
pid_t SpawnLogged(const std::vector<std::string>& args, const std::string& log_path);
// Waits for `pid` to exit; returns its exit code (128 + signal when killed), or -1 after killing it at `timeout`.
int WaitExit(pid_t pid, absl::Duration timeout);

// One streamed request's end status and the token ids it received.
struct StreamOutcome {
  grpc::Status status;
  std::vector<int32_t> ids;
};
// Streams one greedy request per (prompt, max_new_tokens) at once and waits for all; *seen (may be null) counts
// the tokens received so far, for a test that injects a fault mid-way.
std::vector<StreamOutcome> RunGreedyStreams(const ServerProcess& server,
                                            const std::vector<std::pair<std::string, int>>& requests,
                                            std::atomic<int>* seen, absl::Duration deadline = absl::Seconds(120));

// A greedy request: prompt text, ignore_eos, exactly max_new_tokens new tokens.
tpserve::v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_new_tokens);

// Parses the Prometheus text format: value of the sample with this exact name+labels string, e.g.
// `tpserve:generation_tokens_total{model_name="m"}`; NaN when absent.
double MetricValue(const std::string& metrics_text, const std::string& sample);

}  // namespace tpserve::testing
