// Security through real processes: the public API over TLS with an API key (missing or wrong keys are
// UNAUTHENTICATED), and mutual TLS on the worker control plane (no cluster certificate, no registration).
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"
#include "tests/util/test_pki.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

v1::GenerateRequest Small() {
  v1::GenerateRequest req;
  req.set_prompt("Once upon a time");
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_new_tokens(5);
  return req;
}

// A server whose public API runs TLS with `pki`'s node certificate and requires API key `key` (written to
// `key_file`).
ServerOptions TlsWithApiKey(const std::string& model_dir, const Pki& pki, const std::string& key,
                            const std::string& key_file) {
  std::ofstream(key_file) << key << "\n";
  ServerOptions o{model_dir, 1,
                  {"--tls_cert=" + pki.dir + "/node.pem", "--tls_key=" + pki.dir + "/node.key",
                   "--api_key_file=" + key_file}};
  o.tls_ca = pki.dir + "/ca.pem";
  return o;
}

TEST(SecurityTest, TlsApiWithApiKey) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  Pki pki = MakePki("api");
  ASSERT_TRUE(pki.ok);
  const std::string key_file = pki.dir + "/api.key";
  ServerProcess server(TlsWithApiKey(model_dir, pki, "s3cret-key", key_file));
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  v1::GenerateResponse resp;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->Generate(&ctx, Small(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong-key!");
    grpc::Status s = stub->Generate(&ctx, Small(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer s3cret-key");
    grpc::Status s = stub->Generate(&ctx, Small(), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.token_ids_size(), 5);
  }
  // Plaintext clients cannot talk to the TLS port at all.
  auto plain = v1::Generation::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  EXPECT_FALSE(plain->Generate(&ctx, Small(), &resp).ok());
  // The CLI client speaks TLS + key too.
  std::string cmd = BinDir() + "/tpserve generate --server localhost:" + std::to_string(server.port()) +
                    " --tls-ca " + pki.dir + "/ca.pem --api-key-file " + key_file +
                    " --prompt hi --max-new-tokens 3 --json >/dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  // The OpenAI HTTP port takes the same TLS certificate and API key (curl: a client no one here wrote).
  if (std::system("command -v curl >/dev/null 2>&1") == 0) {
    const std::string url = "https://localhost:" + std::to_string(server.http_port()) + "/v1/completions";
    const std::string body = " -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 5, \"temperature\": 0}'";
    auto curl_code = [&](const std::string& args) {
      std::string out = pki.dir + "/curl.out";
      std::string c = "curl -s -o /dev/null -w '%{http_code}' --max-time 20 " + args + " > " + out + " 2>/dev/null";
      std::system(c.c_str());
      return ReadFileOrDie(out);
    };
    EXPECT_EQ(curl_code("--cacert " + pki.dir + "/ca.pem -H 'Authorization: Bearer s3cret-key' " + url + body), "200");
    EXPECT_EQ(curl_code("--cacert " + pki.dir + "/ca.pem " + url + body), "401");
    EXPECT_EQ(curl_code("--cacert " + pki.dir + "/ca.pem -H 'Authorization: Bearer wrong' " + url + body), "401");
    // Plaintext HTTP to the TLS port gets no HTTP answer.
    EXPECT_EQ(curl_code("http://localhost:" + std::to_string(server.http_port()) + "/v1/models"), "000");
  }
  EXPECT_EQ(server.Stop(), 0);
}

int RunWorker(const std::string& worker_port, const std::string& extra) {
  std::string cmd = BinDir() + "/tpserve worker --coordinator 127.0.0.1:" + worker_port +
                    " --rank 0 --world-size 1 --connect-timeout 3 " + extra + " >/dev/null 2>&1";
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(SecurityTest, ControlPlaneRequiresTheClusterCertificate) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  Pki cluster = MakePki("cluster");
  Pki rogue = MakePki("rogue");
  ASSERT_TRUE(cluster.ok && rogue.ok);
  const std::string creds = "--cluster_ca=" + cluster.dir + "/ca.pem --cluster_cert=" + cluster.dir +
                            "/node.pem --cluster_key=" + cluster.dir + "/node.key";
  ServerProcess server({model_dir, 1,
                        {"--cluster_ca=" + cluster.dir + "/ca.pem", "--cluster_cert=" + cluster.dir + "/node.pem",
                         "--cluster_key=" + cluster.dir + "/node.key", "--restart_workers=false"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();  // its own workers hold the cluster certificate
  const std::string wport = std::to_string(server.worker_port());
  // No certificate: the coordinator refuses the handshake; the worker never registers.
  EXPECT_NE(RunWorker(wport, ""), 0);
  // A certificate from another CA: refused as well.
  EXPECT_NE(RunWorker(wport, "--cluster_ca=" + rogue.dir + "/ca.pem --cluster_cert=" + rogue.dir +
                                 "/node.pem --cluster_key=" + rogue.dir + "/node.key"),
            0);
  EXPECT_EQ(server.ReadLog().find("rank 0 registered twice"), std::string::npos)
      << "an unauthenticated worker got as far as registering";
  EXPECT_EQ(server.HealthStatus(), "SERVING");
  EXPECT_EQ(server.Stop(), 0);
  // And a worker holding the cluster certificate refuses a coordinator that cannot prove it is the cluster's.
  ServerProcess plain({model_dir, 1, {"--restart_workers=false"}});
  ASSERT_TRUE(plain.Start().ok()) << plain.ReadLog();
  EXPECT_NE(RunWorker(std::to_string(plain.worker_port()), creds), 0);
  EXPECT_EQ(plain.Stop(), 0);
}

// tpserve-bench over gRPC reaches a TLS server that requires an API key (--tls-ca, --api-key-file), and a
// missing key fails before any load with the server's own message.
TEST(TpserveBenchSecurityTest, OverTlsWithApiKey) {  // TpserveBench*: needs tpserve-bench (no ASan build)
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  Pki pki = MakePki("bench");
  ASSERT_TRUE(pki.ok);
  const std::string key_file = pki.dir + "/api.key";
  ServerProcess server(TlsWithApiKey(model_dir, pki, "bench-key", key_file));
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const std::string bench = BinDir() + "/tpserve-bench --server localhost:" + std::to_string(server.port()) +
                            " --tls-ca " + pki.dir + "/ca.pem --num-requests 3 --input-len 16 --output-len 4";
  const std::string json_path = pki.dir + "/report.json";
  EXPECT_EQ(std::system((bench + " --api-key-file " + key_file + " --json " + json_path + " >/dev/null 2>&1").c_str()),
            0);
  const std::string report = ReadFileOrDie(json_path);
  EXPECT_NE(report.find("\"completed\": 3"), std::string::npos) << report;
  const std::string log = pki.dir + "/nokey.log";
  const int rc = std::system((bench + " >" + log + " 2>&1").c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 1) << rc;
  const std::string out = ReadFileOrDie(log);
  EXPECT_NE(out.find("missing API key"), std::string::npos) << out;
  EXPECT_EQ(server.Stop(), 0);
}

}  // namespace
}  // namespace tpserve::testing
