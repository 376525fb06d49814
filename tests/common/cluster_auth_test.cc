// The cluster-token handshake's wire contract (common/cluster_auth.h), checked against HMAC-SHA256 computed by
// the openssl CLI over the documented byte layout, plus the properties the protocol leans on.
#include "common/cluster_auth.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "tests/util/test_pki.h"

namespace tpserve::cluster_auth {
namespace {

std::string U32(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
}

// HMAC-SHA256(key, data) by `openssl dgst`, hex.
std::string OpensslHmacHex(const std::string& key, const std::string& data) {
  testing::ScopedTempDir dir("hmac");
  std::ofstream(dir.path + "/data", std::ios::binary) << data;
  const std::string cmd = "openssl dgst -sha256 -mac HMAC -macopt hexkey:" + absl::BytesToHexString(key) + " -r " +
                          dir.path + "/data";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[256] = {0};
  std::string out = fgets(buf, sizeof(buf), p) ? buf : "";
  pclose(p);
  return out.substr(0, out.find(' '));
}

TEST(ClusterAuthTest, ProofsAndStoreMacsAreHmacSha256OverTheDocumentedLayout) {
  if (!testing::HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  const std::string token = "0123456789abcdef0123456789abcdef";
  const std::string nc(kNonceBytes, 'c'), nw(kNonceBytes, 'w');
  const std::string tail = U32(32) + nc + U32(32) + nw;
  for (auto [role, label] : {std::pair{Role::kCoordinator, "coordinator"}, std::pair{Role::kWorker, "worker"}}) {
    const std::string msg = std::string("tpserve-worker-auth-v1/") + label + '\0' + tail + U32(1) + U32(2);
    EXPECT_EQ(ToHex(Proof(token, role, nc, nw, 1, 2)), OpensslHmacHex(token, msg)) << label;
  }
  const std::string key = StoreSessionKey(token, nc, nw);
  EXPECT_EQ(ToHex(key), OpensslHmacHex(token, std::string("tpserve-worker-auth-v1/store") + '\0' + tail));
  const std::string call = std::string("StoreSet") + '\0' + U32(2) + U32(3) + "k/1" + U32(2) + "v!";
  EXPECT_EQ(ToHex(StoreCallMac(key, "StoreSet", {"k/1", "v!"})), OpensslHmacHex(key, call));
}

TEST(ClusterAuthTest, EachProofBindsItsRoleNoncesAndRank) {
  const std::string t = "0123456789abcdef0123456789abcdef";
  const std::string a = RandomNonce(), b = RandomNonce();
  ASSERT_EQ(a.size(), kNonceBytes);
  EXPECT_NE(a, b);
  const std::string p = Proof(t, Role::kWorker, a, b, 0, 2);
  EXPECT_NE(p, Proof(t, Role::kCoordinator, a, b, 0, 2));  // one side's proof never answers for the other
  EXPECT_NE(p, Proof(t, Role::kWorker, b, a, 0, 2));
  EXPECT_NE(p, Proof(t, Role::kWorker, a, b, 1, 2));
  EXPECT_NE(p, Proof(t + "x", Role::kWorker, a, b, 0, 2));
  // Field boundaries are length-prefixed: moving bytes between fields changes the MAC.
  EXPECT_NE(StoreCallMac(t, "StoreSet", {"ab", "c"}), StoreCallMac(t, "StoreSet", {"a", "bc"}));
  EXPECT_TRUE(Equal(p, Proof(t, Role::kWorker, a, b, 0, 2)));
  EXPECT_FALSE(Equal(p, p.substr(1)));
}

TEST(ClusterAuthTest, TokenFileIsTrimmedAndMustBeLongEnough) {
  testing::ScopedTempDir dir("token");
  std::ofstream(dir.path + "/ok") << "  0123456789abcdef0123\n";
  auto ok = ReadClusterToken(dir.path + "/ok");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "0123456789abcdef0123");
  std::ofstream(dir.path + "/short") << "secret\n";
  auto weak = ReadClusterToken(dir.path + "/short");
  ASSERT_FALSE(weak.ok());
  EXPECT_NE(weak.status().message().find("--cluster-token-file"), std::string::npos) << weak.status();
  EXPECT_FALSE(ReadClusterToken(dir.path + "/absent").ok());
}

}  // namespace
}  // namespace tpserve::cluster_auth
