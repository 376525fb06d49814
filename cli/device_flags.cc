// Flags shared by `serve` and `worker`: where and how the forward pass runs.
#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, device, "cpu", "serve: cpu or cuda (worker r uses cuda:r); worker: cpu or cuda:K");
ABSL_FLAG(int, threads, 0, "CPU kernel threads per worker (0: serve = cores / tp; worker = what the coordinator says)");
ABSL_FLAG(std::string, cpu_isa, "auto", "CPU kernels: auto, amx, avx512, avx2 or scalar");
ABSL_FLAG(std::string, cluster_ca, "", "mutual TLS on the worker control plane: CA bundle (PEM) of the cluster");
ABSL_FLAG(std::string, cluster_cert, "", "mutual TLS on the worker control plane: this process' certificate (PEM)");
ABSL_FLAG(std::string, cluster_key, "", "mutual TLS on the worker control plane: this process' private key (PEM)");
