// Who may use the coordinator's worker control plane (tpserve.worker.v1.WorkerControl), decided in one place.
//
// - Mutual TLS (--cluster-ca/--cluster-cert/--cluster-key): the TLS layer takes the peer's certificate and its
//   proof of key possession (common/credentials.h MakeClusterServerCredentials); CheckPeer verifies here that
//   the certificate chains to the cluster CA and is fit for TLS client use, on every call.
// - Cluster token (--cluster-token-file): the challenge-response of common/cluster_auth.h on the Connect
//   stream (NewChallenge / Verify), which opens a store session; CheckStoreCall requires a valid per-call MAC
//   under an open session for StoreSet / StoreGet.
// Both may be on at once; then both must pass. With neither, every peer is admitted: the coordinator allows
// that only on a loopback address or with --insecure-worker-plane (CheckWorkerPlaneExposure).
// A check that fails returns a Refusal: a short reason (the label of tpserve:worker_auth_refused_total) and a
// message for the log and for the refused peer. Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"
#include "worker.pb.h"

typedef struct x509_store_st X509_STORE;

namespace tpserve::coordinator {

struct Refusal {
  std::string reason;   // no_client_certificate | untrusted_certificate | no_token | wrong_token |
                        // unanswered_challenge | bad_store_mac | unexpected_message
  std::string message;
};

// True for 127.0.0.0/8, ::1 (bracketed or not), ::ffff:127.x and "localhost".
bool IsLoopbackHost(absl::string_view host);

// The startup rule: a worker plane that admits unauthenticated workers may listen only on loopback, unless
// the operator said --insecure-worker-plane. FAILED_PRECONDITION naming the flags otherwise.
absl::Status CheckWorkerPlaneExposure(const std::string& host, bool authenticated, bool insecure_allowed);

struct WorkerAuthOptions {
  std::string cluster_ca_pem;  // non-empty: mutual TLS, peers must chain to this bundle
  std::string token;           // non-empty: the cluster token
};

class WorkerAuthenticator {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerAuthenticator>> Create(const WorkerAuthOptions& options);
  ~WorkerAuthenticator();
  WorkerAuthenticator(const WorkerAuthenticator&) = delete;
  WorkerAuthenticator& operator=(const WorkerAuthenticator&) = delete;

  bool uses_mtls() const { return ca_store_ != nullptr; }
  bool uses_token() const { return !token_.empty(); }
  // "mtls", "token", "mtls+token" or "none" (the auth label of tpserve:worker_plane_info).
  std::string mode() const;

  // Transport check of any call (a no-op without mutual TLS).
  std::optional<Refusal> CheckPeer(const grpc::AuthContext& auth) const;

  // Token handshake of one Connect stream.
  struct Challenge {
    std::string coordinator_nonce;
    std::string worker_nonce;
    int32_t rank = 0;
    int32_t world_size = 0;
  };
  // Fills *challenge and *out (the AuthChallenge to send) for a Hello; a Refusal when the Hello carries no
  // well-formed nonce (the worker has no --cluster-token-file).
  std::optional<Refusal> NewChallenge(const tpserve::worker::v1::Hello& hello, Challenge* challenge,
                                      tpserve::worker::v1::AuthChallenge* out) const;
  // Checks the worker's proof; on success opens a store session and sets *session_id.
  std::optional<Refusal> Verify(const Challenge& challenge, const tpserve::worker::v1::AuthResponse& response,
                                std::string* session_id);
  void CloseSession(const std::string& session_id);

  // Gate of a store call: CheckPeer, and with a token a MAC of (method, fields) under an open session.
  std::optional<Refusal> CheckStoreCall(const grpc::CallbackServerContext& context, absl::string_view method,
                                        const std::vector<std::string>& fields) const;

 private:
  WorkerAuthenticator() = default;

  X509_STORE* ca_store_ = nullptr;
  std::string token_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> sessions_ ABSL_GUARDED_BY(mu_);  // id -> store key
};

}  // namespace tpserve::coordinator
