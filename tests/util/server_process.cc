// Implementation of tests/util/server_process.h.
#include "tests/util/server_process.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::testing {

ServerProcess::ServerProcess(ServerOptions options) : options_(std::move(options)) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && exit_status_ < 0) Stop(absl::Seconds(10));
}

absl::Status ServerProcess::Start() {
  dir_ = MakeTempDir("server");
  log_path_ = dir_ + "/server.log";
  const std::string port_file = dir_ + "/ports.json";
  std::vector<std::string> args = {BinDir() + "/tpserve",
                                   options_.command,
                                   "--model=" + options_.model_dir,
                                   "--tp=" + std::to_string(options_.tp),
                                   "--host=127.0.0.1",
                                   "--port=0",
                                   "--metrics_host=127.0.0.1",
                                   "--metrics_port=0",
                                   "--http_port=0",
                                   "--worker_port=0",
                                   "--port_file=" + port_file,
                                   "--kv_cache_memory=64MiB"};
  if (!options_.default_worker_host) args.push_back("--worker_host=127.0.0.1");
  for (const auto& f : options_.extra_flags) args.push_back(f);
  pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ > 0 && options_.own_process_group) setpgid(pid_, pid_);  // both sides, so no signal races it
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    if (options_.own_process_group) setpgid(0, 0);
    int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + ScaledTimeout(options_.ready_timeout);
  // 1. The port file appears once every port is bound.
  while (true) {
    std::ifstream f(port_file);
    if (f) {
      nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
      if (!j.is_discarded()) {
        port_ = j["port"];
        worker_port_ = j["worker_port"];
        metrics_port_ = j["metrics_port"];
        http_port_ = j.value("http_port", -1);
        break;
      }
    }
    if (PollExit() >= 0) return absl::InternalError("server exited during startup:\n" + ReadLog());
    if (absl::Now() > deadline) return absl::DeadlineExceededError("no port file:\n" + ReadLog());
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!options_.wait_for_serving) return absl::OkStatus();
  // 2. Health SERVING.
  while (HealthStatus() != "SERVING") {
    if (PollExit() >= 0) return absl::InternalError("server exited during startup:\n" + ReadLog());
    if (absl::Now() > deadline) return absl::DeadlineExceededError("not SERVING in time:\n" + ReadLog());
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::OkStatus();
}

void ServerProcess::Signal(int sig) {
  if (pid_ > 0 && exit_status_ < 0) kill(pid_, sig);
}

void ServerProcess::SignalGroup(int sig) {
  if (pid_ > 0 && exit_status_ < 0 && options_.own_process_group) kill(-pid_, sig);
}

std::string ServerProcess::LogTail(int lines) const {
  const std::string log = ReadLog();
  std::vector<absl::string_view> all = absl::StrSplit(log, '\n');
  if (!all.empty() && all.back().empty()) all.pop_back();
  const size_t first = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + first, all.end(), "\n");
}

::testing::AssertionResult ServerProcess::WaitUntil(const std::function<bool()>& condition, const std::string& what,
                                                    absl::Duration timeout) {
  timeout = ScaledTimeout(timeout);
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (PollExit() >= 0) {
      return ::testing::AssertionFailure() << "the server exited (status " << exit_status_ << ") while waiting for "
                                           << what << "; its last log lines:\n" << LogTail();
    }
    if (absl::Now() > deadline) {
      return ::testing::AssertionFailure() << "no " << what << " within " << absl::FormatDuration(timeout)
                                           << "; the server's last log lines:\n" << LogTail();
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  return ::testing::AssertionSuccess();
}

int ServerProcess::PollExit() {
  if (pid_ <= 0) return -1;
  if (exit_status_ >= 0) return exit_status_;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exit_status_;
}

int ServerProcess::Stop(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  if (PollExit() >= 0) return exit_status_;
  kill(pid_, SIGTERM);
  absl::Time deadline = absl::Now() + ScaledTimeout(timeout);
  while (absl::Now() < deadline) {
    if (PollExit() >= 0) return exit_status_;
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  exit_status_ = 137;
  return -1;
}

std::string ServerProcess::ReadLog() const {
  std::ifstream f(log_path_);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::shared_ptr<grpc::Channel> ServerProcess::NewChannel() const {
  if (options_.tls_ca.empty()) return grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFileOrDie(options_.tls_ca);
  return grpc::CreateChannel(address(), grpc::SslCredentials(o));
}

std::unique_ptr<tpserve::v1::Generation::Stub> ServerProcess::NewStub() const {
  return tpserve::v1::Generation::NewStub(NewChannel());
}

std::string ServerProcess::HealthStatus() const {
  auto stub = grpc::health::v1::Health::NewStub(NewChannel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) return "error: " + s.error_message();
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
}

bool ServerProcess::WaitForHealth(const std::string& want, absl::Duration timeout) const {
  absl::Time deadline = absl::Now() + ScaledTimeout(timeout);
  while (absl::Now() < deadline) {
    if (HealthStatus() == want) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

std::string ServerProcess::HttpGet(const std::string& path, int* code) const {
  if (code) *code = -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(metrics_port_));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  size_t sp = resp.find(' ');
  if (code && sp != std::string::npos) absl::SimpleAtoi(resp.substr(sp + 1, 3), code);
  size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

std::vector<pid_t> ServerProcess::ChildPids() const {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    std::getline(f, line);
    size_t rp = line.rfind(')');
    if (rp == std::string::npos) continue;
    std::vector<std::string> parts = absl::StrSplit(line.substr(rp + 2), ' ');
    int ppid;
    if (parts.size() > 1 && absl::SimpleAtoi(parts[1], &ppid) && ppid == pid_ && parts[0] != "Z") out.push_back(pid);
  }
  closedir(d);
  return out;
}

pid_t SpawnLogged(const std::vector<std::string>& args, const std::string& log_path) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + ScaledTimeout(timeout);
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::vector<StreamOutcome> RunGreedyStreams(const ServerProcess& server,
                                            const std::vector<std::pair<std::string, int>>& requests,
                                            std::atomic<int>* seen, absl::Duration deadline) {
  auto stub = server.NewStub();
  std::vector<StreamOutcome> out(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(absl::ToInt64Milliseconds(ScaledTimeout(deadline))));
      auto reader = stub->GenerateStream(&ctx, GreedyRequest(requests[i].first, requests[i].second));
      tpserve::v1::GenerateStreamResponse msg;
      while (reader->Read(&msg)) {
        out[i].ids.insert(out[i].ids.end(), msg.token_ids().begin(), msg.token_ids().end());
        if (seen) *seen += msg.token_ids_size();
      }
      out[i].status = reader->Finish();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

tpserve::v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_new_tokens) {
  tpserve::v1::GenerateRequest req;
  req.set_prompt(prompt);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

double MetricValue(const std::string& text, const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, sample) && line.size() > sample.size() && line[sample.size()] == ' ') {
      double v;
      if (absl::SimpleAtod(line.substr(sample.size() + 1), &v)) return v;
    }
  }
  return std::nan("");
}

}  // namespace tpserve::testing
