// The startup rule of coordinator/worker_auth.h: which bind addresses count as loopback, and when an
// unauthenticated worker plane is refused.
#include "coordinator/worker_auth.h"

#include "gtest/gtest.h"

namespace tpserve::coordinator {
namespace {

TEST(WorkerPlaneExposureRuleTest, LoopbackAddresses) {
  for (const char* h : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(IsLoopbackHost(h)) << h;
  }
  for (const char* h : {"0.0.0.0", "::", "[::]", "10.0.0.1", "128.0.0.1", "::ffff:10.0.0.1", "tpserve-0.tpserve",
                        "", "127.0.0.1.example.com"}) {
    EXPECT_FALSE(IsLoopbackHost(h)) << h;
  }
}

TEST(WorkerPlaneExposureRuleTest, UnauthenticatedNetworkBindNeedsTheExplicitOverride) {
  EXPECT_TRUE(CheckWorkerPlaneExposure("127.0.0.1", false, false).ok());
  EXPECT_TRUE(CheckWorkerPlaneExposure("0.0.0.0", true, false).ok());
  EXPECT_TRUE(CheckWorkerPlaneExposure("0.0.0.0", false, true).ok());
  absl::Status s = CheckWorkerPlaneExposure("0.0.0.0", false, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  for (const char* flag : {"--cluster-ca", "--cluster-cert", "--cluster-key", "--cluster-token-file",
                           "--insecure-worker-plane", "--worker-host"}) {
    EXPECT_NE(s.message().find(flag), std::string::npos) << flag;
  }
}

TEST(WorkerPlaneExposureRuleTest, AuthenticatorModes) {
  auto none = WorkerAuthenticator::Create({});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)->mode(), "none");
  auto token = WorkerAuthenticator::Create({"", "0123456789abcdef"});
  ASSERT_TRUE(token.ok());
  EXPECT_EQ((*token)->mode(), "token");
  EXPECT_FALSE(WorkerAuthenticator::Create({"not a certificate", ""}).ok());
  // A Hello without a nonce (a worker with no token) is refused before any challenge is made.
  tpserve::worker::v1::Hello hello;
  WorkerAuthenticator::Challenge c;
  tpserve::worker::v1::AuthChallenge out;
  auto r = (*token)->NewChallenge(hello, &c, &out);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->reason, "no_token");
}

}  // namespace
}  // namespace tpserve::coordinator
