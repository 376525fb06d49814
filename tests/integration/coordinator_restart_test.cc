// Coordinator restart with standalone workers (the Kubernetes layout): while the coordinator is gone clients
// get UNAVAILABLE at once (never a hang); the worker notices, keeps its weights, registers again with the new
// coordinator, and serving resumes with the same greedy ids.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

int FreePort() {
  // Ask the kernel for an ephemeral port by binding port 0 once.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// `timeout` scales with $TPSERVE_TEST_TIMEOUT_SCALE like the test utilities' waits: under the sanitizers the
// coordinator and its worker start several times slower (TSan: 5-15x).
bool WaitServing(const std::string& addr, absl::Duration timeout) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  absl::Time deadline = absl::Now() + ScaledTimeout(timeout);
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    grpc::health::v1::HealthCheckResponse resp;
    if (stub->Check(&ctx, {}, &resp).ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

TEST(CoordinatorRestartTest, WorkerRegistersAgainAndClientsGetUnavailableMeanwhile) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  const std::string dir = MakeTempDir("coord-restart");
  const int port = FreePort(), wport = FreePort();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  const std::vector<std::string> coord = {BinDir() + "/tpserve", "coordinator", "--model=" + model_dir, "--tp=1",
                                          "--host=127.0.0.1", "--port=" + std::to_string(port),
                                          "--worker_host=127.0.0.1", "--worker_port=" + std::to_string(wport),
                                          "--metrics_port=-1", "--http_port=-1",
                                          // The serving tests' KV size (tests/util/server_process.cc): the 1 GiB
                                          // default took the worker ~2 min to allocate under TSan, twice.
                                          "--kv_cache_memory=64MiB"};
  pid_t c = SpawnLogged(coord, dir + "/coordinator.log");
  pid_t w = SpawnLogged({BinDir() + "/tpserve", "worker", "--coordinator=127.0.0.1:" + std::to_string(wport), "--rank=0",
                   "--world_size=1"},
                  dir + "/worker.log");
  ASSERT_TRUE(WaitServing(addr, absl::Seconds(60))) << ReadFileOrDie(dir + "/coordinator.log");
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  auto generate = [&](grpc::Status* s) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(absl::ToInt64Milliseconds(ScaledTimeout(absl::Seconds(10)))));
    v1::GenerateResponse resp;
    *s = stub->Generate(&ctx, GreedyRequest("Once upon a time", 6), &resp);
    return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
  };
  grpc::Status s;
  const std::vector<int32_t> before = generate(&s);
  ASSERT_TRUE(s.ok()) << s.error_message();

  kill(c, SIGKILL);
  waitpid(c, nullptr, 0);
  generate(&s);
  // Not hanging is the status, not a time: a hang would end DEADLINE_EXCEEDED at the call's (scaled) 10 s deadline.
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  c = SpawnLogged(coord, dir + "/coordinator.log");
  ASSERT_TRUE(WaitServing(addr, absl::Seconds(60))) << ReadFileOrDie(dir + "/worker.log");
  EXPECT_EQ(generate(&s), before);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(ReadFileOrDie(dir + "/worker.log").find("registering again"), std::string::npos);
  kill(c, SIGTERM);
  waitpid(c, nullptr, 0);
  int status = 0;
  waitpid(w, &status, 0);  // told to shut down by the coordinator
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace tpserve::testing
