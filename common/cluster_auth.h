// Token authentication of the worker control plane (--cluster-token-file): both sides prove they hold the
// shared cluster token without sending it, by HMAC-SHA256 over fresh nonces (a challenge-response on the
// Connect stream), and every rendezvous-store call carries a MAC under a key derived from that session.
//
//   worker -> Hello{rank, world_size, auth_nonce = Nw}                         (Nw: 32 random bytes)
//   coordinator -> AuthChallenge{nonce = Nc, coordinator_proof = P("coordinator")}
//   worker checks the coordinator's proof first (a coordinator without the token learns nothing), then
//   worker -> AuthResponse{proof = P("worker")}
//   P(role) = HMAC-SHA256(token, "tpserve-worker-auth-v1/" role || Nc || Nw || rank || world_size)
//   store session key = HMAC-SHA256(token, "tpserve-worker-auth-v1/store" || Nc || Nw), session id = hex(Nc);
//   each StoreSet / StoreGet carries metadata tpserve-session and tpserve-store-mac =
//   HMAC-SHA256(session key, method || each field length-prefixed).
// The two roles use different labels, so one side's proof is never a valid answer for the other, and the
// nonces are fresh per stream, so a recorded exchange is worth nothing on the next one. What this does not
// give: confidentiality or integrity of the stream after the handshake (plaintext gRPC). An on-path attacker
// can read prompts and hijack a session; mutual TLS (--cluster-ca/--cluster-cert/--cluster-key) covers that,
// and both can be combined.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tpserve::cluster_auth {

inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMinTokenBytes = 16;
// gRPC metadata keys of a store call.
inline constexpr char kSessionMetadata[] = "tpserve-session";
inline constexpr char kStoreMacMetadata[] = "tpserve-store-mac";

// Reads --cluster-token-file: surrounding whitespace stripped (a Secret created with a trailing newline is
// the same token), at least kMinTokenBytes. INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<std::string> ReadClusterToken(const std::string& path);

// kNonceBytes from the OpenSSL CSPRNG.
std::string RandomNonce();

enum class Role { kCoordinator, kWorker };
// P(role) above. Nonces must be kNonceBytes long (callers check what came off the wire).
std::string Proof(absl::string_view token, Role role, absl::string_view coordinator_nonce,
                  absl::string_view worker_nonce, int32_t rank, int32_t world_size);
std::string StoreSessionKey(absl::string_view token, absl::string_view coordinator_nonce,
                            absl::string_view worker_nonce);
// The MAC of one store call: method ("StoreSet" / "StoreGet") and its fields in order.
std::string StoreCallMac(absl::string_view session_key, absl::string_view method,
                         const std::vector<std::string>& fields);

// Constant-time comparison (CRYPTO_memcmp): a mismatch position never leaks through timing.
bool Equal(absl::string_view a, absl::string_view b);

std::string ToHex(absl::string_view bytes);

}  // namespace tpserve::cluster_auth
