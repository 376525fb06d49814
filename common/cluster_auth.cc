// Implementation of common/cluster_auth.h (OpenSSL libcrypto: HMAC, RAND_bytes, CRYPTO_memcmp).
#include "common/cluster_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/credentials.h"
#include "common/log.h"

namespace tpserve::cluster_auth {
namespace {

constexpr char kLabel[] = "tpserve-worker-auth-v1/";

void AppendU32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const unsigned char* ok =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
           data.size(), mac, &len);
  TP_CHECK(ok != nullptr) << "HMAC-SHA256 failed";
  return std::string(reinterpret_cast<const char*>(mac), len);
}

}  // namespace

absl::StatusOr<std::string> ReadClusterToken(const std::string& path) {
  auto raw = ReadSmallFile(path, "--cluster-token-file");
  if (!raw.ok()) return raw.status();
  std::string token(absl::StripAsciiWhitespace(*raw));
  if (token.size() < kMinTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat("--cluster-token-file: '", path, "' holds ", token.size(),
                                                   " bytes; a cluster token needs at least ", kMinTokenBytes,
                                                   " (make one with: openssl rand -hex 32)"));
  }
  return token;
}

std::string RandomNonce() {
  std::string nonce(kNonceBytes, '\0');
  TP_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(nonce.size())) == 1)
      << "RAND_bytes failed";
  return nonce;
}

std::string Proof(absl::string_view token, Role role, absl::string_view coordinator_nonce,
                  absl::string_view worker_nonce, int32_t rank, int32_t world_size) {
  std::string msg = absl::StrCat(kLabel, role == Role::kCoordinator ? "coordinator" : "worker");
  msg.push_back('\0');
  AppendU32(&msg, static_cast<uint32_t>(coordinator_nonce.size()));
  msg.append(coordinator_nonce.data(), coordinator_nonce.size());
  AppendU32(&msg, static_cast<uint32_t>(worker_nonce.size()));
  msg.append(worker_nonce.data(), worker_nonce.size());
  AppendU32(&msg, static_cast<uint32_t>(rank));
  AppendU32(&msg, static_cast<uint32_t>(world_size));
  return HmacSha256(token, msg);
}

std::string StoreSessionKey(absl::string_view token, absl::string_view coordinator_nonce,
                            absl::string_view worker_nonce) {
  std::string msg = absl::StrCat(kLabel, "store");
  msg.push_back('\0');
  AppendU32(&msg, static_cast<uint32_t>(coordinator_nonce.size()));
  msg.append(coordinator_nonce.data(), coordinator_nonce.size());
  AppendU32(&msg, static_cast<uint32_t>(worker_nonce.size()));
  msg.append(worker_nonce.data(), worker_nonce.size());
  return HmacSha256(token, msg);
}

std::string StoreCallMac(absl::string_view session_key, absl::string_view method,
                         const std::vector<std::string>& fields) {
  std::string msg(method);
  msg.push_back('\0');
  AppendU32(&msg, static_cast<uint32_t>(fields.size()));
  for (const auto& f : fields) {
    AppendU32(&msg, static_cast<uint32_t>(f.size()));
    msg.append(f);
  }
  return HmacSha256(session_key, msg);
}

bool Equal(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string ToHex(absl::string_view bytes) { return absl::BytesToHexString(bytes); }

}  // namespace tpserve::cluster_auth
