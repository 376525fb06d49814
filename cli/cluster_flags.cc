// The worker control plane's credentials, shared by the commands on either side of it (serve, coordinator,
// worker): the cluster token and the mutual TLS files.
#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, cluster_token_file, "",
          "worker control plane: file holding the shared cluster token (e.g. a Kubernetes Secret; make one with "
          "`openssl rand -hex 32`). Coordinator and workers prove they hold it by HMAC challenge-response; it is "
          "never sent. serve: empty = a fresh random token per run, shared with its own workers only");
ABSL_FLAG(std::string, cluster_ca, "", "mutual TLS on the worker control plane: CA bundle (PEM) of the cluster");
ABSL_FLAG(std::string, cluster_cert, "", "mutual TLS on the worker control plane: this process' certificate (PEM)");
ABSL_FLAG(std::string, cluster_key, "", "mutual TLS on the worker control plane: this process' private key (PEM)");
