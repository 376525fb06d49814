// Built when TPSERVE_CUDA=OFF: NCCL is not available in this binary.
#include "absl/status/status.h"
#include "worker/comm/communicator.h"

namespace tpserve::comm {

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions&, Store&) {
  return absl::UnavailableError("this tpserve binary was built without CUDA/NCCL (-DTPSERVE_CUDA=ON)");
}

}  // namespace tpserve::comm
