#pragma once
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0 };
