// Throwaway certificates for TLS tests, made at test time with the openssl CLI (no key is ever committed).
#pragma once

#include <string>

namespace tpserve::testing {

// A CA (dir/ca.pem, ca.key) and a node certificate it signed (dir/node.pem, node.key) for 127.0.0.1 /
// localhost. ok is false when openssl failed.
struct Pki {
  std::string dir;
  bool ok = false;
};
Pki MakePki(const std::string& name);

bool HaveOpenssl();

}  // namespace tpserve::testing
