// The cluster token flag, shared by the commands on either side of the worker control plane (serve,
// coordinator, worker). The mutual TLS flags (--cluster-ca/--cluster-cert/--cluster-key) sit in
// device_flags.cc.
#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, cluster_token_file, "",
          "worker control plane: file holding the shared cluster token (e.g. a Kubernetes Secret; make one with "
          "`openssl rand -hex 32`). Coordinator and workers prove they hold it by HMAC challenge-response; it is "
          "never sent. serve: empty = a fresh random token per run, shared with its own workers only");
