// gRPC transport credentials from PEM files: TLS for the public API, mutual TLS for the worker control plane.
// Empty paths mean plaintext (loopback and trusted networks only).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace tpserve {

struct TlsFiles {
  std::string cert;  // PEM certificate chain of this side
  std::string key;   // PEM private key of this side
  std::string ca;    // PEM CA bundle that must have signed the peer's certificate
  bool enabled() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

// Server side. With require_client_cert, clients must present a certificate signed by `ca` (mTLS).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files,
                                                                               bool require_client_cert);
// Server side of the worker control plane with mutual TLS: TLS requests a client certificate (and the proof
// that the peer holds its key) but leaves the chain check to the application (coordinator/worker_auth.h),
// which refuses every call whose certificate is missing or does not chain to files.ca, and logs and counts
// the refusal with the peer address (a handshake-level refusal would be invisible to both).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeClusterServerCredentials(const TlsFiles& files);
// Client side: verifies the server against `ca` (system roots when empty) and presents cert/key when set.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& files);

// Reads a whole file (a PEM or a secret); INVALID_ARGUMENT naming `what` and the path when unreadable or empty.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, const std::string& what);

}  // namespace tpserve
