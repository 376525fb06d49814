// NCCL collectives for tensor-parallel workers on GPUs. Rank 0 creates the ncclUniqueId and publishes it
// through the coordinator's rendezvous Store under "<prefix>/nccl_id"; the communicator is initialised
// when the worker loads, so a bad topology fails at startup. NCCL's ring/tree reductions use a fixed
// order per communicator, so every rank ends an all-reduce with bitwise-identical data.
//
// Blocking on the hot path, bounded everywhere else:
//  - Set-up uses a non-blocking communicator, polled until it is ready or NcclOptions::timeout passes
//    (then ncclCommAbort), so a missing peer is DEADLINE_EXCEEDED at load instead of a hang. That
//    communicator is then split (all ranks, one colour) into a *blocking* one for the collectives: on a
//    non-blocking communicator NCCL >= 2.23 answers every collective with ncclInProgress and the caller
//    must poll ncclCommGetAsyncError before the next call, about 82 polls with sleeps per TP=2 step.
//    A blocking collective returns as soon as it is enqueued on the forward pass's stream.
//  - A watchdog thread (as PyTorch's ProcessGroupNCCL has) polls ncclCommGetAsyncError every
//    kWatchdogPeriod and checks the event recorded after the latest collective: a peer that failed
//    (ncclRemoteError / ncclSystemError) or a collective unfinished after NcclOptions::op_timeout (the
//    coordinator's --step-timeout) makes it call ncclCommAbort. NCCL's kernels then return, the host's
//    wait on the stream ends, AsyncError() is UNAVAILABLE, and the worker reports the step failed and
//    re-forms its group on the next LoadCommand, as a Gloo timeout does.
//
// NCCL refuses two ranks of one communicator on the same GPU ("Duplicate GPU detected",
// ncclInvalidUsage): tensor parallelism over NCCL needs one GPU per rank, i.e. a multi-GPU machine
// (or several machines). Single-GPU runs use world_size 1 (or the Gloo/CPU path for tests).
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
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

constexpr auto kWatchdogPeriod = std::chrono::milliseconds(100);

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

// Set-up and teardown only: a non-blocking communicator may answer ncclInProgress; poll until the
// operation settles or `timeout` passes (then the caller aborts the communicator).
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
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Collectives: thread-compatible (one forward pass at a time). AsyncError() and the watchdog are
// thread-safe against them (mu_).
class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const NcclOptions& options, ncclComm_t comm, cudaEvent_t done)
      : rank_(options.rank),
        world_size_(options.world_size),
        device_(options.device),
        stream_(static_cast<cudaStream_t>(options.stream)),
        timeout_(options.timeout),
        op_timeout_(options.op_timeout),
        comm_(comm),
        done_(done) {
    watchdog_ = std::thread([this] { WatchdogLoop(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    cudaSetDevice(device_);
    if (!aborted_) {
      // Let this rank's collectives finish (bounded), then abort: ncclCommAbort only frees local
      // resources, while a blocking destroy may wait on peers that are gone or stuck, and the group is
      // being torn down on every rank anyway (re-forming or shutting down).
      WaitStreamIdle(timeout_);
      ncclCommAbort(comm_);
    }
    cudaEventDestroy(done_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string name() const override { return "nccl"; }
  bool stream_ordered() const override { return true; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (count == 0) return absl::OkStatus();
    std::lock_guard<std::mutex> l(mu_);
    if (aborted_) return broken_;
    TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaSetDevice", cudaSetDevice(device_)));
    return Enqueued("ncclAllReduce", ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_));
  }

  absl::Status AllGather(const float* send, size_t count, float* recv) override {
    if (count == 0) return absl::OkStatus();
    std::lock_guard<std::mutex> l(mu_);
    if (aborted_) return broken_;
    TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaSetDevice", cudaSetDevice(device_)));
    return Enqueued("ncclAllGather", ncclAllGather(send, recv, count, ncclFloat, comm_, stream_));
  }

  absl::Status AsyncError() override {
    std::lock_guard<std::mutex> l(mu_);
    if (aborted_) return broken_;
    CheckPeersLocked();
    return aborted_ ? broken_ : absl::OkStatus();
  }

  // The watchdog's abort, on request: the host's wait on the stream ends and AsyncError() is UNAVAILABLE.
  void Abort(const std::string& why) override {
    std::lock_guard<std::mutex> l(mu_);
    AbortLocked(absl::UnavailableError(why));
  }

  std::string InFlight() const override {
    std::lock_guard<std::mutex> l(mu_);
    if (!pending_ || aborted_) return "";
    const auto waited = std::chrono::steady_clock::now() - last_enqueue_;
    return absl::StrCat("a collective enqueued ", absl::FormatDuration(absl::FromChrono(waited)),
                        " ago, not finished on the GPU when the watchdog last looked");
  }

 private:
  // Called with mu_ held, right after a blocking collective call returned.
  absl::Status Enqueued(const char* what, ncclResult_t r) {
    if (r != ncclSuccess) {
      absl::Status s = NcclStatus(what, r, comm_);
      AbortLocked(s);
      return s;
    }
    // The watchdog's view of progress: this collective is done when `done_` is.
    TP_RETURN_IF_ERROR(CudaRuntimeStatus("cudaEventRecord", cudaEventRecord(done_, stream_)));
    last_enqueue_ = std::chrono::steady_clock::now();
    pending_ = true;
    return absl::OkStatus();
  }

  // Aborts (once) when a peer failed asynchronously. mu_ held.
  void CheckPeersLocked() {
    if (aborted_) return;
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) {
      AbortLocked(NcclStatus("ncclCommGetAsyncError", r, comm_));
    } else if (state != ncclSuccess && state != ncclInProgress) {
      absl::Status s = NcclStatus("NCCL communicator", state, comm_);
      AbortLocked(absl::UnavailableError(absl::StrCat("a peer failed: ", s.message())));
    }
  }

  void AbortLocked(const absl::Status& why) {
    if (aborted_) return;
    aborted_ = true;
    broken_ = absl::UnavailableError(absl::StrCat("NCCL communicator (rank ", rank_, "/", world_size_,
                                                  ") aborted: ", why.message()));
    TP_LOG(ERROR) << broken_.message();
    ncclCommAbort(comm_);  // NCCL's kernels return; the stream drains
    comm_ = nullptr;
  }

  void WatchdogLoop() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_ && !aborted_) {
      cv_.wait_for(l, kWatchdogPeriod);
      if (stop_ || aborted_) break;
      CheckPeersLocked();
      if (aborted_ || !pending_) continue;
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) {
        pending_ = false;
      } else if (q != cudaErrorNotReady) {
        AbortLocked(CudaRuntimeStatus("cudaEventQuery", q));
      } else if (std::chrono::steady_clock::now() - last_enqueue_ > absl::ToChronoNanoseconds(op_timeout_)) {
        AbortLocked(absl::DeadlineExceededError(
            absl::StrCat("a collective did not finish within ", absl::FormatDuration(op_timeout_),
                         " (a peer is gone or stuck)")));
      }
    }
  }

  bool WaitStreamIdle(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) return true;
      if (q != cudaErrorNotReady || absl::Now() > deadline) {
        cudaGetLastError();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  const int rank_;
  const int world_size_;
  const int device_;
  const cudaStream_t stream_;  // nullptr: the legacy default stream
  const absl::Duration timeout_;
  const absl::Duration op_timeout_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  ncclComm_t comm_;          // null once aborted
  cudaEvent_t done_;         // recorded after every collective
  bool pending_ = false;     // done_ not yet seen complete
  std::chrono::steady_clock::time_point last_enqueue_;
  bool aborted_ = false;
  absl::Status broken_;
  bool stop_ = false;
  std::thread watchdog_;
};

// Non-blocking init, bounded by options.timeout.
absl::StatusOr<ncclComm_t> InitNonBlocking(const NcclOptions& options, const ncclUniqueId& id) {
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
  return comm;
}

// The blocking communicator the collectives use, split off the ready non-blocking one (same ranks).
// Every peer has just finished init, so the split only waits for them to reach this call.
absl::StatusOr<ncclComm_t> SplitBlocking(ncclComm_t parent, const NcclOptions& options) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;
  ncclComm_t child = nullptr;
  ncclResult_t r = ncclCommSplit(parent, /*color=*/0, /*key=*/options.rank, &child, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = NcclStatus("ncclCommSplit", r, parent);
    if (child != nullptr) ncclCommAbort(child);
    return s;
  }
  // The parent is non-blocking: the split may still be settling on either communicator.
  absl::Status s = WaitForComm(parent, "ncclCommSplit", options.timeout);
  if (s.ok() && child != nullptr) s = WaitForComm(child, "ncclCommSplit (child)", options.timeout);
  if (s.ok() && child == nullptr) s = absl::InternalError("ncclCommSplit returned no communicator");
  if (!s.ok()) {
    if (child != nullptr) ncclCommAbort(child);
    return s;
  }
  return child;
}

void DestroyNonBlocking(ncclComm_t comm, absl::Duration timeout) {
  ncclResult_t r = ncclCommFinalize(comm);
  const bool clean = (r == ncclSuccess || r == ncclInProgress) && WaitForComm(comm, "ncclCommFinalize", timeout).ok();
  if (clean) {
    ncclCommDestroy(comm);
  } else {
    ncclCommAbort(comm);
  }
}

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
  if (options.timeout <= absl::ZeroDuration() || options.op_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("NcclOptions.timeout and op_timeout must be positive");
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

  TP_ASSIGN_OR_RETURN(ncclComm_t setup, InitNonBlocking(options, id));
  absl::StatusOr<ncclComm_t> comm = SplitBlocking(setup, options);
  DestroyNonBlocking(setup, options.timeout);
  if (!comm.ok()) return comm.status();
  cudaEvent_t done = nullptr;
  absl::Status s = CudaRuntimeStatus("cudaEventCreate", cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  if (!s.ok()) {
    ncclCommAbort(*comm);
    return s;
  }
  TP_LOG(INFO) << "NCCL rank " << options.rank << "/" << options.world_size << " ready on cuda:" << options.device;
  return std::unique_ptr<Communicator>(new NcclCommunicator(options, *comm, done));
}

}  // namespace tpserve::comm
