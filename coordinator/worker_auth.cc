// Implementation of coordinator/worker_auth.h (OpenSSL for the certificate chain check).
#include "coordinator/worker_auth.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/cluster_auth.h"
#include "grpc/grpc_security_constants.h"

namespace tpserve::coordinator {

namespace wv1 = tpserve::worker::v1;

namespace {

// Every certificate of a PEM bundle, in order (empty when none parses).
std::vector<X509*> ReadPemCertificates(absl::string_view pem) {
  std::vector<X509*> out;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return out;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) out.push_back(cert);
  BIO_free(bio);
  ERR_clear_error();  // the read that ends the loop leaves "no start line" on the error queue
  return out;
}

std::string FirstProperty(const grpc::AuthContext& auth, const char* name) {
  auto values = auth.FindPropertyValues(name);
  if (values.empty()) return "";
  return std::string(values.front().data(), values.front().size());
}

std::string Metadata(const grpc::CallbackServerContext& context, const char* key) {
  const auto& md = context.client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

bool IsLoopbackHost(absl::string_view host) {
  std::string h(absl::AsciiStrToLower(absl::StripAsciiWhitespace(host)));
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::Status CheckWorkerPlaneExposure(const std::string& host, bool authenticated, bool insecure_allowed) {
  if (authenticated || IsLoopbackHost(host) || insecure_allowed) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "refusing to listen for workers on ", host,
      " without authentication: any process that can reach that port could take a tensor-parallel rank, see "
      "every prompt and choose every token. Authenticate workers with mutual TLS (--cluster-ca, "
      "--cluster-cert, --cluster-key) or a shared secret (--cluster-token-file), keep the worker plane on "
      "loopback (--worker-host=127.0.0.1), or accept the risk with --insecure-worker-plane"));
}

absl::StatusOr<std::unique_ptr<WorkerAuthenticator>> WorkerAuthenticator::Create(const WorkerAuthOptions& options) {
  std::unique_ptr<WorkerAuthenticator> auth(new WorkerAuthenticator());
  auth->token_ = options.token;
  if (!options.cluster_ca_pem.empty()) {
    std::vector<X509*> cas = ReadPemCertificates(options.cluster_ca_pem);
    if (cas.empty()) return absl::InvalidArgumentError("--cluster-ca: no PEM certificate in the file");
    auth->ca_store_ = X509_STORE_new();
    for (X509* ca : cas) {
      X509_STORE_add_cert(auth->ca_store_, ca);
      X509_free(ca);
    }
  }
  return auth;
}

WorkerAuthenticator::~WorkerAuthenticator() {
  if (ca_store_ != nullptr) X509_STORE_free(ca_store_);
}

std::string WorkerAuthenticator::mode() const {
  if (uses_mtls() && uses_token()) return "mtls+token";
  if (uses_mtls()) return "mtls";
  if (uses_token()) return "token";
  return "none";
}

std::optional<Refusal> WorkerAuthenticator::CheckPeer(const grpc::AuthContext& auth) const {
  if (!uses_mtls()) return std::nullopt;
  const std::string leaf_pem = FirstProperty(auth, GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (leaf_pem.empty()) {
    return Refusal{"no_client_certificate", "no client certificate: this worker plane needs mutual TLS "
                                            "(--cluster-ca, --cluster-cert, --cluster-key)"};
  }
  std::vector<X509*> leaf = ReadPemCertificates(leaf_pem);
  std::vector<X509*> chain = ReadPemCertificates(FirstProperty(auth, GRPC_X509_PEM_CERT_CHAIN_PROPERTY_NAME));
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  for (X509* c : chain) {
    if (untrusted == nullptr || sk_X509_push(untrusted, c) == 0) X509_free(c);
  }
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  int ok = 0;
  int err = X509_V_ERR_UNSPECIFIED;
  if (!leaf.empty() && ctx != nullptr && untrusted != nullptr &&
      X509_STORE_CTX_init(ctx, ca_store_, leaf.front(), untrusted) == 1) {
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    ok = X509_verify_cert(ctx);
    err = X509_STORE_CTX_get_error(ctx);
  }
  std::string subject;
  if (!leaf.empty()) {
    char buf[256] = {0};
    X509_NAME_oneline(X509_get_subject_name(leaf.front()), buf, sizeof(buf) - 1);
    subject = buf;
  }
  X509_STORE_CTX_free(ctx);
  if (untrusted != nullptr) sk_X509_pop_free(untrusted, X509_free);
  for (X509* c : leaf) X509_free(c);
  ERR_clear_error();
  if (ok == 1) return std::nullopt;
  return Refusal{"untrusted_certificate",
                 absl::StrCat("client certificate '", subject, "' is not from the cluster CA (--cluster-ca): ",
                              X509_verify_cert_error_string(err))};
}

std::optional<Refusal> WorkerAuthenticator::NewChallenge(const wv1::Hello& hello, Challenge* challenge,
                                                         wv1::AuthChallenge* out) const {
  if (hello.auth_nonce().size() != cluster_auth::kNonceBytes) {
    return Refusal{"no_token", "this coordinator requires a cluster token: start the worker with "
                               "--cluster-token-file (the same secret as the coordinator's)"};
  }
  challenge->coordinator_nonce = cluster_auth::RandomNonce();
  challenge->worker_nonce = hello.auth_nonce();
  challenge->rank = hello.rank();
  challenge->world_size = hello.world_size();
  out->set_nonce(challenge->coordinator_nonce);
  out->set_coordinator_proof(cluster_auth::Proof(token_, cluster_auth::Role::kCoordinator,
                                                 challenge->coordinator_nonce, challenge->worker_nonce,
                                                 challenge->rank, challenge->world_size));
  return std::nullopt;
}

std::optional<Refusal> WorkerAuthenticator::Verify(const Challenge& challenge, const wv1::AuthResponse& response,
                                                   std::string* session_id) {
  const std::string want = cluster_auth::Proof(token_, cluster_auth::Role::kWorker, challenge.coordinator_nonce,
                                               challenge.worker_nonce, challenge.rank, challenge.world_size);
  if (!cluster_auth::Equal(want, response.proof())) {
    return Refusal{"wrong_token", "the worker's cluster-token proof does not match: --cluster-token-file differs "
                                  "from the coordinator's"};
  }
  *session_id = cluster_auth::ToHex(challenge.coordinator_nonce);
  absl::MutexLock lock(&mu_);
  sessions_[*session_id] =
      cluster_auth::StoreSessionKey(token_, challenge.coordinator_nonce, challenge.worker_nonce);
  return std::nullopt;
}

void WorkerAuthenticator::CloseSession(const std::string& session_id) {
  if (session_id.empty()) return;
  absl::MutexLock lock(&mu_);
  sessions_.erase(session_id);
}

std::optional<Refusal> WorkerAuthenticator::CheckStoreCall(const grpc::CallbackServerContext& context,
                                                           absl::string_view method,
                                                           const std::vector<std::string>& fields) const {
  if (auto r = CheckPeer(*context.auth_context())) return r;
  if (!uses_token()) return std::nullopt;
  const std::string session = Metadata(context, cluster_auth::kSessionMetadata);
  const std::string mac = Metadata(context, cluster_auth::kStoreMacMetadata);
  std::string key;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session);
    if (it != sessions_.end()) key = it->second;
  }
  if (key.empty()) {
    return Refusal{"bad_store_mac", absl::StrCat("rendezvous store ", method,
                                                 " without an authenticated control-stream session")};
  }
  if (!cluster_auth::Equal(cluster_auth::ToHex(cluster_auth::StoreCallMac(key, method, fields)), mac)) {
    return Refusal{"bad_store_mac", absl::StrCat("rendezvous store ", method, " with a MAC that does not match its session")};
  }
  return std::nullopt;
}

}  // namespace tpserve::coordinator
