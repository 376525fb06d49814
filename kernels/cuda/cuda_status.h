// cudaError_t -> absl::Status for the CUDA backend's factories and allocations (host .cc files only).
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_check.h"

namespace tpserve::kernels::cuda {

inline absl::Status CudaStatus(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return absl::OkStatus();
  // No driver / no device / driver too old all mean "no usable GPU here", not an internal bug.
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice ||
      e == cudaErrorDevicesUnavailable || e == cudaErrorNotSupported ||
      e == cudaErrorInitializationError || e == cudaErrorSystemDriverMismatch ||
      e == cudaErrorCompatNotSupportedOnDevice) {
    return absl::UnavailableError(CudaErrorText(what, e));
  }
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(CudaErrorText(what, e));
  return absl::InternalError(CudaErrorText(what, e));
}

}  // namespace tpserve::kernels::cuda

// Returns an absl::Status from the enclosing function when a CUDA call fails.
#define TP_CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                    \
    cudaError_t tp_cuda_err_ = (expr);                                                    \
    if (tp_cuda_err_ != cudaSuccess) return ::tpserve::kernels::cuda::CudaStatus(#expr, tp_cuda_err_); \
  } while (0)
