// Error checking for CUDA runtime and cuBLAS calls inside the CUDA backend.
// A failing launch or copy inside an op is a broken invariant (bad device state or a bug), so ops
// TP_CHECK; factories and allocations that can fail on a healthy system return absl::Status instead
// (cuda_status.h). Free of Abseil so nvcc-compiled .cu files can include it.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <string>

#include "common/log.h"

namespace tpserve::kernels::cuda {

const char* CublasStatusName(cublasStatus_t s);

// "cudaMalloc: out of memory (cudaErrorMemoryAllocation)".
inline std::string CudaErrorText(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
}

}  // namespace tpserve::kernels::cuda

// For invariants inside ops: the call must succeed.
#define TP_CUDA_CHECK(expr)                                                                     \
  do {                                                                                          \
    cudaError_t tp_cuda_err_ = (expr);                                                          \
    TP_CHECK(tp_cuda_err_ == cudaSuccess) << ::tpserve::kernels::cuda::CudaErrorText(#expr,      \
                                                                                  tp_cuda_err_); \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately (does not synchronize).
#define TP_CUDA_CHECK_LAUNCH(name) TP_CUDA_CHECK(cudaGetLastError())

#define TP_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                     \
    cublasStatus_t tp_cublas_st_ = (expr);                                                 \
    TP_CHECK(tp_cublas_st_ == CUBLAS_STATUS_SUCCESS)                                       \
        << #expr << ": " << ::tpserve::kernels::cuda::CublasStatusName(tp_cublas_st_);     \
  } while (0)
