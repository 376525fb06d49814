// Only the cluster's own workers join a tensor-parallel group (issue 20), through real processes on 127.0.0.1:
// - with a cluster token and with mutual TLS: a rank is killed (kill -9) during streaming greedy requests;
//   while it is free, rogue workers (no credentials, a wrong token, no client certificate, a certificate from
//   another CA) and a hand-written rogue client (a wrong proof, store calls without a session) are refused,
//   logged with their address and counted; the real worker rejoins and every in-flight request completes with
//   its fault-free greedy ids (and request 0 with ../shared/reference);
// - `tpserve serve` with its defaults listens only on loopback (the serve process and its workers, read from
//   /proc/<pid>/fd and /proc/net/tcp{,6}) and refuses a worker that is not its own;
// - `tpserve coordinator` with the worker plane on 0.0.0.0 and no credentials exits non-zero naming the flags.
#include <arpa/inet.h>
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <netinet/in.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"
#include "tests/util/test_pki.h"
#include "worker.grpc.pb.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;
namespace wv1 = tpserve::worker::v1;

const char* kPrompts[] = {"Once upon a time", "Lily and Tom", "The big dog", "One day, a little bird"};
constexpr int kRequests = 4;

using Outcome = StreamOutcome;

// kRequests streaming greedy requests at once; *seen counts the tokens received so far.
std::vector<Outcome> RunRequests(const ServerProcess& server, std::atomic<int>* seen) {
  std::vector<std::pair<std::string, int>> requests;
  for (int i = 0; i < kRequests; ++i) requests.emplace_back(kPrompts[i], 60 + 10 * i);
  return RunGreedyStreams(server, requests, seen, absl::Seconds(300));
}

std::string RandomHex(int bytes) {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < bytes; ++i) absl::StrAppend(&out, absl::Hex(rd() & 0xff, absl::kZeroPad2));
  return out;
}

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

double Refused(const ServerProcess& server, const std::string& reason) {
  double v = MetricValue(server.HttpGet("/metrics"), "tpserve:worker_auth_refused_total{model_name=\"stories260K\",reason=\"" +
                                                         reason + "\"}");
  return std::isnan(v) ? 0 : v;
}

// Runs `tpserve worker` as rank 0 of 2 against the coordinator and returns its exit code.
int RunRogue(const ServerProcess& server, const std::string& dir, const std::vector<std::string>& flags) {
  std::vector<std::string> args = {BinDir() + "/tpserve", "worker",
                                   "--coordinator=127.0.0.1:" + std::to_string(server.worker_port()), "--rank=0",
                                   "--world_size=2", "--comm_host=127.0.0.1", "--connect_timeout=3"};
  args.insert(args.end(), flags.begin(), flags.end());
  return WaitExit(SpawnLogged(args, dir + "/rogue.log"), absl::Seconds(60));
}

enum class Mode { kToken, kMtls };

class WorkerAuthTest : public ::testing::TestWithParam<Mode> {};

TEST_P(WorkerAuthTest, RoguesAreRefusedWhileARankIsFreeAndTheRealWorkerRejoinsWithExactReplay) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(reference_path, "reference/stories260K.json");
  const Mode mode = GetParam();
  if (mode == Mode::kMtls && !HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  ScopedTempDir dir("worker-auth");
  std::vector<std::string> creds;  // what the coordinator and the real workers hold
  Pki cluster, rogue;
  if (mode == Mode::kToken) {
    creds = {"--cluster_token_file=" + WriteFile(dir.path + "/token", RandomHex(32) + "\n")};
  } else {
    cluster = MakePki("cluster");
    rogue = MakePki("rogue");
    ASSERT_TRUE(cluster.ok && rogue.ok);
    creds = {"--cluster_ca=" + cluster.dir + "/ca.pem", "--cluster_cert=" + cluster.dir + "/node.pem",
             "--cluster_key=" + cluster.dir + "/node.key"};
  }
  ServerOptions o{model_dir, 2, {"--max_num_seqs=2", "--recovery_timeout=240"}};
  o.extra_flags.insert(o.extra_flags.end(), creds.begin(), creds.end());
  o.command = "coordinator";
  o.wait_for_serving = false;
  ServerProcess server(o);
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto start_worker = [&](int rank) {
    std::vector<std::string> args = {BinDir() + "/tpserve", "worker",
                                     "--coordinator=127.0.0.1:" + std::to_string(server.worker_port()),
                                     "--rank=" + std::to_string(rank), "--world_size=2", "--comm_host=127.0.0.1"};
    args.insert(args.end(), creds.begin(), creds.end());
    return SpawnLogged(args, dir.path + "/worker" + std::to_string(rank) + ".log");
  };
  pid_t rank0 = start_worker(0);
  pid_t rank1 = start_worker(1);
  ASSERT_TRUE(server.WaitForHealth("SERVING", absl::Seconds(180))) << server.ReadLog();

  const std::vector<Outcome> clean = RunRequests(server, nullptr);
  for (const auto& c : clean) ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(reference_path));
  const std::vector<int32_t> want = ref["cases"][0]["generated_ids"];
  ASSERT_GE(clean[0].ids.size(), 20u);
  EXPECT_EQ(std::vector<int32_t>(clean[0].ids.begin(), clean[0].ids.begin() + 20),
            std::vector<int32_t>(want.begin(), want.begin() + 20));

  std::atomic<int> seen{0};
  std::vector<Outcome> faulty;
  std::thread clients([&] { faulty = RunRequests(server, &seen); });
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (seen.load() < 20 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  kill(rank0, SIGKILL);
  EXPECT_EQ(WaitExit(rank0, absl::Seconds(10)), 128 + SIGKILL);
  ASSERT_TRUE(server.WaitForHealth("NOT_SERVING", absl::Seconds(30)));

  // Rank 0 is free. Every rogue must fail, and none may register.
  auto channel = [&](bool with_rogue_cert) {
    if (mode == Mode::kToken) {
      return grpc::CreateChannel("127.0.0.1:" + std::to_string(server.worker_port()),
                                 grpc::InsecureChannelCredentials());
    }
    grpc::SslCredentialsOptions so;
    so.pem_root_certs = ReadFileOrDie(cluster.dir + "/ca.pem");
    if (with_rogue_cert) {
      so.pem_cert_chain = ReadFileOrDie(rogue.dir + "/node.pem");
      so.pem_private_key = ReadFileOrDie(rogue.dir + "/node.key");
    }
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(server.worker_port()), grpc::SslCredentials(so));
  };
  std::map<std::string, double> want_refused;
  EXPECT_NE(RunRogue(server, dir.path, {}), 0) << "a worker without credentials";
  if (mode == Mode::kToken) {
    want_refused["no_token"] = 1;
    EXPECT_NE(RunRogue(server, dir.path, {"--cluster_token_file=" + WriteFile(dir.path + "/wrong", RandomHex(32))}), 0)
        << "a worker with a wrong token";
    want_refused["unanswered_challenge"] = 1;  // our worker hangs up when the coordinator's proof fails
  } else {
    // Plaintext never completes the TLS handshake; these two complete it and are refused by the chain check.
    EXPECT_NE(RunRogue(server, dir.path, {"--cluster_ca=" + cluster.dir + "/ca.pem"}), 0) << "no client certificate";
    want_refused["no_client_certificate"] = 1;
    EXPECT_NE(RunRogue(server, dir.path,
                       {"--cluster_ca=" + cluster.dir + "/ca.pem", "--cluster_cert=" + rogue.dir + "/node.pem",
                        "--cluster_key=" + rogue.dir + "/node.key"}),
              0)
        << "a certificate from another CA";
    want_refused["untrusted_certificate"] = 1;
  }
  // A hand-written rogue that answers the challenge without the token, and writes and reads the store.
  {
    auto stub = wv1::WorkerControl::NewStub(channel(/*with_rogue_cert=*/true));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = stub->Connect(&ctx);
    wv1::WorkerMessage hello;
    hello.mutable_hello()->set_rank(0);
    hello.mutable_hello()->set_world_size(2);
    hello.mutable_hello()->set_auth_nonce(std::string(32, 'n'));
    stream->Write(hello);
    wv1::CoordinatorMessage m;
    if (mode == Mode::kToken) {
      ASSERT_TRUE(stream->Read(&m));
      ASSERT_TRUE(m.has_auth_challenge()) << m.DebugString();
      wv1::WorkerMessage answer;
      answer.mutable_auth_response()->set_proof(std::string(32, 'p'));
      stream->Write(answer);
      want_refused["wrong_token"] = 1;
    } else {
      want_refused["untrusted_certificate"] += 1;
    }
    while (stream->Read(&m)) ADD_FAILURE() << "a rogue got a message: " << m.DebugString();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

    grpc::ClientContext set_ctx;
    set_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    set_ctx.AddMetadata("tpserve-session", std::string(64, '0'));
    set_ctx.AddMetadata("tpserve-store-mac", std::string(64, '0'));
    wv1::StoreSetRequest set;
    set.set_key("g2/gloo/rank0");
    set.set_value("rogue");
    wv1::StoreSetResponse set_resp;
    EXPECT_EQ(stub->StoreSet(&set_ctx, set, &set_resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext get_ctx;
    get_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    wv1::StoreGetRequest get;
    get.add_keys("g1/nccl_id");
    get.set_timeout_ms(10);
    wv1::StoreGetResponse get_resp;
    EXPECT_EQ(stub->StoreGet(&get_ctx, get, &get_resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    want_refused[mode == Mode::kToken ? "bad_store_mac" : "untrusted_certificate"] += 2;
  }
  for (const auto& [reason, n] : want_refused) {
    EXPECT_EQ(Refused(server, reason), n) << reason << "\n" << server.ReadLog();
  }
  const std::string log = server.ReadLog();
  EXPECT_GE(Count(log, "refused worker-plane peer ipv4:127.0.0.1:"), 3) << log;
  EXPECT_EQ(Count(log, "worker rank 0 registered"), 1) << "a rogue registered:\n" << log;

  // The real worker comes back; every held request replays to exactly its fault-free ids.
  rank0 = start_worker(0);
  clients.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(faulty[i].status.ok()) << "request " << i << ": " << faulty[i].status.error_message() << "\n"
                                       << server.ReadLog() << "\n--- rank 0 (restarted):\n"
                                       << ReadFileOrDie(dir.path + "/worker0.log") << "\n--- rank 1:\n"
                                       << ReadFileOrDie(dir.path + "/worker1.log");
    EXPECT_EQ(faulty[i].ids, clean[i].ids) << "request " << i;
  }
  EXPECT_EQ(Count(server.ReadLog(), "worker rank 0 registered"), 2);
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_EQ(WaitExit(rank0, absl::Seconds(30)), 0);
  EXPECT_EQ(WaitExit(rank1, absl::Seconds(30)), 0);
}

INSTANTIATE_TEST_SUITE_P(Auth, WorkerAuthTest, ::testing::Values(Mode::kToken, Mode::kMtls),
                         [](const auto& info) { return info.param == Mode::kToken ? "Token" : "Mtls"; });

// Listening TCP sockets of the given processes: "address:port" strings, from /proc/<pid>/fd (socket inodes)
// and /proc/<pid>/net/tcp{,6} (state 0A = LISTEN).
struct Listener {
  std::string address;
  int port = 0;
  bool loopback = false;
};

std::vector<Listener> ListeningSockets(const std::vector<pid_t>& pids) {
  std::set<std::string> inodes;
  for (pid_t pid : pids) {
    const std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
    DIR* d = opendir(fd_dir.c_str());
    if (d == nullptr) continue;
    while (dirent* e = readdir(d)) {
      char target[256] = {0};
      ssize_t n = readlink((fd_dir + "/" + e->d_name).c_str(), target, sizeof(target) - 1);
      if (n > 0 && absl::StartsWith(target, "socket:[")) inodes.insert(std::string(target + 8, n - 9));
    }
    closedir(d);
  }
  std::vector<Listener> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream f(absl::StrCat("/proc/", pids.front(), "/net/", table));
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
      std::vector<std::string> cols = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (cols.size() < 10 || cols[3] != "0A" || !inodes.count(cols[9])) continue;
      std::vector<std::string> addr_port = absl::StrSplit(cols[1], ':');
      Listener l;
      uint32_t port = 0;
      absl::SimpleHexAtoi(addr_port[1], &port);
      l.port = static_cast<int>(port);
      // The kernel prints each 32-bit word of the address in host (little-endian) order.
      unsigned char bytes[16] = {0};
      const std::string& hex = addr_port[0];
      for (size_t w = 0; w < hex.size() / 8; ++w) {
        uint32_t word = 0;
        absl::SimpleHexAtoi(hex.substr(w * 8, 8), &word);
        for (int b = 0; b < 4; ++b) bytes[w * 4 + b] = static_cast<unsigned char>(word >> (8 * b));
      }
      char text[INET6_ADDRSTRLEN] = {0};
      if (hex.size() == 8) {
        inet_ntop(AF_INET, bytes, text, sizeof(text));
        l.loopback = bytes[0] == 127;
      } else {
        inet_ntop(AF_INET6, bytes, text, sizeof(text));
        in6_addr a;
        std::memcpy(&a, bytes, 16);
        l.loopback = IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && bytes[12] == 127);
      }
      l.address = text;
      out.push_back(l);
    }
  }
  return out;
}

TEST(WorkerPlaneExposureTest, ServeWithDefaultsListensOnlyOnLoopbackAndRefusesAWorkerNotItsOwn) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  // Only the public API and metrics are moved to 127.0.0.1 (their defaults are public on purpose); the worker
  // plane, rendezvous store and Gloo ports keep serve's defaults.
  ServerOptions o{model_dir, 2, {}};
  o.default_worker_host = true;
  ServerProcess server(o);
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  std::vector<pid_t> pids = {server.pid()};
  std::vector<pid_t> workers = server.ChildPids();
  ASSERT_EQ(workers.size(), 2u);
  pids.insert(pids.end(), workers.begin(), workers.end());
  const std::vector<Listener> listeners = ListeningSockets(pids);
  std::set<int> ports;
  for (const auto& l : listeners) {
    ports.insert(l.port);
    EXPECT_TRUE(l.loopback) << "listening on " << l.address << ":" << l.port;
  }
  EXPECT_TRUE(ports.count(server.worker_port())) << "the scan did not see the worker plane's own socket";
  EXPECT_TRUE(ports.count(server.port()));
  EXPECT_NE(server.ReadLog().find("worker auth: token"), std::string::npos) << server.ReadLog();

  // Even from this machine, a worker that is not serve's own cannot take a rank.
  ScopedTempDir dir("serve-rogue");
  EXPECT_NE(RunRogue(server, dir.path, {}), 0);
  EXPECT_EQ(Refused(server, "no_token"), 1) << server.ReadLog();
  // A worker with some other token hangs up on serve's proof: it will not serve a coordinator that cannot
  // prove it holds the worker's token.
  EXPECT_NE(RunRogue(server, dir.path, {"--cluster_token_file=" + WriteFile(dir.path + "/other", RandomHex(32))}), 0);
  EXPECT_NE(ReadFileOrDie(dir.path + "/rogue.log").find("could not prove it holds the cluster token"), std::string::npos)
      << ReadFileOrDie(dir.path + "/rogue.log");
  EXPECT_EQ(Refused(server, "unanswered_challenge"), 1) << server.ReadLog();
  EXPECT_EQ(Count(server.ReadLog(), "registered from"), 2);
  EXPECT_EQ(server.HealthStatus(), "SERVING");
  EXPECT_EQ(server.Stop(), 0);
}

TEST(WorkerPlaneExposureTest, CoordinatorOnAllInterfacesWithoutCredentialsExitsNamingTheFlags) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ScopedTempDir dir("exposed");
  const std::string log = dir.path + "/coordinator.log";
  // The check runs before any port is bound, so nothing listens on 0.0.0.0 even for a moment.
  const std::vector<std::string> base = {BinDir() + "/tpserve", "coordinator", "--model=" + model_dir,
                                         "--host=127.0.0.1",    "--port=0",     "--metrics_port=-1",
                                         "--worker_port=0"};
  for (const std::string host : {"0.0.0.0", "::", "10.1.2.3"}) {
    std::vector<std::string> args = base;
    args.push_back("--worker_host=" + host);
    std::ofstream(log, std::ios::trunc).close();
    EXPECT_NE(WaitExit(SpawnLogged(args, log), absl::Seconds(60)), 0) << host;
    const std::string text = ReadFileOrDie(log);
    for (const char* flag : {"--cluster-token-file", "--cluster-ca", "--cluster-cert", "--cluster-key",
                             "--insecure-worker-plane"}) {
      EXPECT_NE(text.find(flag), std::string::npos) << host << ": " << flag << " not named in:\n" << text;
    }
  }
  // A token too short to be a secret is refused too, naming its flag.
  std::vector<std::string> args = base;
  args.push_back("--worker_host=0.0.0.0");
  args.push_back("--cluster_token_file=" + WriteFile(dir.path + "/weak", "secret\n"));
  std::ofstream(log, std::ios::trunc).close();
  EXPECT_NE(WaitExit(SpawnLogged(args, log), absl::Seconds(60)), 0);
  EXPECT_NE(ReadFileOrDie(log).find("--cluster-token-file"), std::string::npos) << ReadFileOrDie(log);
}

}  // namespace
}  // namespace tpserve::testing
