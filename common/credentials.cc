// Implementation of common/credentials.h.
#include "common/credentials.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tpserve {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::InvalidArgumentError(absl::StrCat(what, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.size() > (1 << 20)) return absl::InvalidArgumentError(absl::StrCat(what, ": '", path, "' is larger than 1 MiB"));
  if (absl::StripAsciiWhitespace(s).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", path, "' is empty"));
  }
  return s;
}

namespace {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsWith(
    const TlsFiles& files, bool require_client_cert, grpc_ssl_client_certificate_request_type request) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  if (files.cert.empty() || files.key.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a private key file");
  }
  if (require_client_cert && files.ca.empty()) {
    return absl::InvalidArgumentError("mutual TLS needs the CA file that signs client certificates");
  }
  grpc::SslServerCredentialsOptions opts(request);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadSmallFile(files.cert, "TLS certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadSmallFile(files.key, "TLS private key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *cert;
  pair.private_key = *key;
  opts.pem_key_cert_pairs.push_back(pair);
  if (!files.ca.empty()) {
    auto ca = ReadSmallFile(files.ca, "TLS CA");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
  }
  return grpc::SslServerCredentials(opts);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files,
                                                                               bool require_client_cert) {
  return ServerCredentialsWith(files, require_client_cert,
                               require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                   : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeClusterServerCredentials(const TlsFiles& files) {
  return ServerCredentialsWith(files, /*require_client_cert=*/true,
                               GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions opts;
  if (!files.ca.empty()) {
    auto ca = ReadSmallFile(files.ca, "TLS CA");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
  }
  if (!files.cert.empty() || !files.key.empty()) {
    if (files.cert.empty() || files.key.empty()) {
      return absl::InvalidArgumentError("a client certificate needs both the certificate and the key file");
    }
    auto cert = ReadSmallFile(files.cert, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadSmallFile(files.key, "TLS private key");
    if (!key.ok()) return key.status();
    opts.pem_cert_chain = *cert;
    opts.pem_private_key = *key;
  }
  return grpc::SslCredentials(opts);
}

}  // namespace tpserve
