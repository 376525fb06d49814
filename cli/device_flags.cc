// Flags shared by `serve` and `worker`: where and how the forward pass runs. `tpserve coordinator` does not own
// them: it runs no forward pass, and GetModelInfo.device comes from the workers' registration.
#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, device, "cpu", "serve: cpu or cuda (worker r uses cuda:r); worker: cpu or cuda:K");
ABSL_FLAG(int, threads, 0, "CPU kernel threads per worker (0: serve = cores / tp; worker = what the coordinator says)");
ABSL_FLAG(std::string, cpu_isa, "auto", "CPU kernels: auto, amx, avx512, avx2 or scalar");
