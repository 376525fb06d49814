// NCCL collectives for tensor-parallel workers on GPUs. Rank 0 creates the ncclUniqueId and publishes it
// through the coordinator's rendezvous Store under "<prefix>/nccl_id"; the communicator is initialised
// when the worker loads, so a bad topology fails at startup. Collectives are enqueued on the forward
// pass's stream and return without waiting. NCCL's ring/tree reductions use a fixed order per
// communicator, so every rank ends an all-reduce with bitwise-identical data.
//
// NCCL refuses two ranks of one communicator on the same GPU ("Duplicate GPU detected",
// ncclInvalidUsage): tensor parallelism over NCCL needs one GPU per rank, i.e. a multi-GPU machine
// (or several machines). Single-GPU runs use world_size 1 (or the Gloo/CPU path for tests).
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/comm/communicator.h"

namespace tpserve::comm {
namespace {

absl::Status NcclStatus(const char* what, ncclResult_t r, ncclComm_t comm) {
  if (r == ncclSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", ncclGetErrorString(r));
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&msg, " (", last, ")");
  // Peers, network and CUDA failures are the environment's; anything else is a usage bug.
  if (r == ncclSystemError || r == ncclRemoteError || r == ncclUnhandledCudaError) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status CudaRuntimeStatus(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")"));
}

// Non-blocking communicators may answer ncclInProgress; poll until the operation settles or
// `timeout` passes (then the communicator is aborted by the caller).
absl::Status WaitForComm(ncclComm_t comm, const char* what, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) return NcclStatus("ncclCommGetAsyncError", r, comm);
    if (state != ncclInProgress) return NcclStatus(what, state, comm);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, " did not complete within ", absl::FormatDuration(timeout),
                       " (are all ranks up, on distinct GPUs, and able to reach each other?)"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

// Thread-compatible: one forward pass at a time calls into it.
class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const NcclOptions& options, ncclComm_t comm)
      : rank_(options.rank),
        world_size_(options.world_size),
        device_(options.device),
        stream_(static_cast<cudaStream_t>(options.stream)),
        timeout_(options.timeout),
        comm_(comm) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    // Finalize flushes outstanding work; abort instead if a peer is gone so that we never hang here.
    ncclResult_t state = ncclSuccess;
    bool clean = ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess;
    if (clean) {
      const ncclResult_t r = ncclCommFinalize(comm_);
      clean = (r == ncclSuccess || r == ncclInProgress) && WaitForComm(comm_, "ncclCommFinalize", timeout_).ok();
    }
    if (clean) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string name() const override { return "nccl"; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (count == 0) return absl::OkStatus();
    TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaSetDevice", cudaSetDevice(device_)));
    return Settle("ncclAllReduce", ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_));
  }

  absl::Status AllGather(const float* send, size_t count, float* recv) override {
    if (count == 0) return absl::OkStatus();
    TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaSetDevice", cudaSetDevice(device_)));
    return Settle("ncclAllGather", ncclAllGather(send, recv, count, ncclFloat, comm_, stream_));
  }

 private:
  // Turns an enqueue result (possibly ncclInProgress) into a status; also reports peers that failed.
  absl::Status Settle(const char* what, ncclResult_t r) {
    if (r == ncclInProgress) return WaitForComm(comm_, what, timeout_);
    TP_RETURN_IF_ERROR(NcclStatus(what, r, comm_));
    ncclResult_t state = ncclSuccess;
    TP_RETURN_IF_ERROR(NcclStatus("ncclCommGetAsyncError", ncclCommGetAsyncError(comm_, &state), comm_));
    return NcclStatus(what, state, comm_);
  }

  int rank_;
  int world_size_;
  int device_;
  cudaStream_t stream_;  // nullptr: the legacy default stream
  absl::Duration timeout_;
  ncclComm_t comm_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options, Store& store) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL rank ", options.rank, " is outside world_size ",
                                                   options.world_size));
  }
  if (options.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL device ", options.device, " is negative"));
  }
  if (options.prefix.empty()) {
    return absl::InvalidArgumentError("NcclOptions.prefix is empty; it must name this group's generation");
  }
  int devices = 0;
  cudaError_t ce = cudaGetDeviceCount(&devices);
  if (ce != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrCat("NCCL needs a CUDA GPU: ",
                                               ce != cudaSuccess ? cudaGetErrorString(ce) : "no device visible"));
  }
  if (options.device >= devices) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL device ", options.device, " does not exist; this machine has ", devices, " GPU(s)"));
  }
  TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaSetDevice", cudaSetDevice(options.device)));

  const std::string key = options.prefix + "/nccl_id";
  ncclUniqueId id;
  if (options.rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return NcclStatus("ncclGetUniqueId", r, nullptr);
    TP_RETURN_IF_ERROR(store.Set(key, std::string(reinterpret_cast<const char*>(&id), sizeof(id))));
  } else {
    TP_ASSIGN_OR_RETURN(std::string bytes, store.Get(key, options.timeout));
    if (bytes.size() != sizeof(id)) {
      return absl::InvalidArgumentError(absl::StrCat("store key ", key, " holds ", bytes.size(),
                                                     " bytes, not an ncclUniqueId (", sizeof(id), " bytes)"));
    }
    std::memcpy(&id, bytes.data(), sizeof(id));
  }

  // Non-blocking init so that a missing peer becomes DEADLINE_EXCEEDED instead of a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, options.world_size, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = NcclStatus("ncclCommInitRank", r, comm);
    if (comm != nullptr) ncclCommAbort(comm);
    return s;
  }
  absl::Status s = WaitForComm(comm, "ncclCommInitRank", options.timeout);
  if (!s.ok()) {
    ncclCommAbort(comm);
    return s;
  }
  TP_LOG(INFO) << "NCCL rank " << options.rank << "/" << options.world_size << " ready on cuda:" << options.device;
  return std::unique_ptr<Communicator>(new NcclCommunicator(options, comm));
}

}  // namespace tpserve::comm
