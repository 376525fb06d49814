// Implementation of tests/util/test_pki.h.
#include "tests/util/test_pki.h"

#include <cstdlib>

#include "tests/util/test_env.h"

namespace tpserve::testing {

Pki MakePki(const std::string& name) {
  Pki p;
  p.dir = MakeTempDir("pki-" + name);
  std::string script =
      "set -e; cd " + p.dir +
      "; openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=" + name +
      "-ca 2>/dev/null"
      "; openssl req -newkey rsa:2048 -nodes -keyout node.key -out node.csr -subj /CN=localhost 2>/dev/null"
      "; printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf"
      "; openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem -days 2"
      " -extfile ext.cnf 2>/dev/null";
  p.ok = std::system(("bash -c \"" + script + "\"").c_str()) == 0;
  return p;
}

bool HaveOpenssl() { return std::system("command -v openssl >/dev/null 2>&1") == 0; }

}  // namespace tpserve::testing
