// Built only when TPSERVE_CUDA=OFF: the CUDA factory reports that this binary has no CUDA support.
#include "absl/status/status.h"
#include "kernels/backend.h"

namespace tpserve::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device) {
  return absl::UnavailableError("this tpserve binary was built without CUDA (-DTPSERVE_CUDA=ON)");
}

int CudaDeviceCount() { return 0; }

}  // namespace tpserve::kernels
