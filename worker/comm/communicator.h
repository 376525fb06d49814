// Collectives between the tensor-parallel workers of one group (NCCL on GPUs, Gloo TCP on CPUs).
// Created and connected at load time so that failures show at startup. The reduction order is fixed, so
// every rank ends each all-reduce with bitwise-identical results.
// Thread-compatible: one forward pass at a time calls into it; Abort() and InFlight() are thread-safe.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tpserve::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string name() const = 0;  // "gloo", "nccl", "local"

  // In place: data[i] = sum over ranks of data[i]. `data` is backend memory (device memory for NCCL).
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // recv = [rank 0's send, rank 1's send, ...], each `count` floats. recv: [world_size * count].
  virtual absl::Status AllGather(const float* send, size_t count, float* recv) = 0;

  // True when collectives are enqueued on the backend's stream (NCCL): callers need not synchronize
  // before one. False for host collectives (Gloo), which read memory directly when called.
  virtual bool stream_ordered() const { return false; }
  // A failure that happened after the calls returned: a stream-ordered collective that a watchdog
  // aborted (a lost peer, or one that ran past its deadline). Results computed since are garbage; the
  // communicator stays broken (UNAVAILABLE) until it is re-created. Call after waiting on the stream.
  virtual absl::Status AsyncError() { return absl::OkStatus(); }

  // Thread-safe; may be called while another thread is inside a collective. Breaks the communicator for
  // good: the collective in flight fails at once with UNAVAILABLE naming `why` (it no longer waits for its
  // op timeout), as does every later call, and the connections to the peers close, so their collectives
  // fail too. The worker calls it when a newer group generation's LoadCommand supersedes this one, so a
  // rank stuck behind a hung or dead peer gets back to its control loop.
  virtual void Abort(const std::string& why) { (void)why; }
  // Thread-safe: the collective in flight and how long it has waited, e.g. "all-reduce #37 of 640 floats
  // for 6.2s"; empty when none is. For the worker's watchdog log.
  virtual std::string InFlight() const { return ""; }
};

// Rendezvous key-value store (served by the coordinator's WorkerControl.StoreSet/StoreGet).
class Store {
 public:
  virtual ~Store() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // Waits until the key exists (DEADLINE_EXCEEDED after `timeout`).
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;
};

// world_size == 1: no-op collectives.
std::unique_ptr<Communicator> CreateLocalCommunicator();

struct GlooOptions {
  int rank = 0;
  int world_size = 1;
  std::string host;            // interface address to bind for pair connections ("" => hostname)
  std::string prefix;          // key namespace in the store, unique per group generation
  absl::Duration timeout = absl::Seconds(120);  // rendezvous and connection set-up
  // How long one collective may wait on its peers before it fails with DEADLINE_EXCEEDED (the worker passes
  // the coordinator's --step-timeout, as for NCCL). A peer whose process dies closes its connections and
  // fails the collective at once (UNAVAILABLE); this bounds a peer that hangs.
  absl::Duration op_timeout = absl::Seconds(600);
};
// Gloo over TCP, rendezvous through `store` (which must outlive the call only).
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options,
                                                                     Store& store);

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  int device = 0;
  std::string prefix;
  void* stream = nullptr;  // cudaStream_t the forward pass runs on
  absl::Duration timeout = absl::Seconds(120);  // rendezvous and communicator set-up
  // How long an enqueued collective may stay unfinished on the GPU before the watchdog aborts the
  // communicator (the worker passes the coordinator's --step-timeout).
  absl::Duration op_timeout = absl::Seconds(600);
};
// NCCL: rank 0 creates the ncclUniqueId and publishes it through `store`. UNAVAILABLE without CUDA.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options,
                                                                     Store& store);

}  // namespace tpserve::comm
