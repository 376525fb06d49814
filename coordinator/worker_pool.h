// The coordinator's side of the worker control plane: serves tpserve.worker.v1.WorkerControl, forms the
// tensor-parallel group from N registering workers (load -> KV sizing -> ready), runs one StepPlan per
// engine iteration across all ranks, and tracks liveness for health. A group that loses a worker becomes
// not-ready at once; when all N ranks are connected again it is re-formed under a new rendezvous generation.
// Every RPC passes the WorkerAuthenticator first (coordinator/worker_auth.h): a refused peer is logged with its
// address, counted through the refusal listener, answered UNAUTHENTICATED, and never registers, receives a
// StepPlan or reads or writes the rendezvous store. The store's RPCs are served by RendezvousStoreService
// (coordinator/store_service.h); WorkerPool forwards them. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/group_membership.h"
#include "coordinator/step_executor.h"
#include "coordinator/store_service.h"
#include "coordinator/worker_auth.h"
#include "coordinator/worker_connection.h"
#include "worker.grpc.pb.h"

namespace tpserve::coordinator {

struct WorkerGroupOptions {
  int world_size = 1;
  std::string model_path;
  std::string dtype = "auto";
  std::string quantization = "none";  // --quantization: "none" or "int8"
  bool quantize_lm_head = false;
  std::string draft_model_path;    // --draft-model: rank 0 loads it for --speculative-method draft
  int64_t kv_cache_bytes = 0;      // per worker; 0 => fraction of free device memory (GPU)
  float kv_memory_fraction = 0.9f;
  int max_kv_blocks = 0;           // cap (0 = none)
  int block_size = 16;
  std::string comm_backend = "auto";  // "gloo", "nccl" or "auto" (nccl when the worker is on a GPU)
  int threads = 0;
  absl::Duration step_timeout = absl::Seconds(600);  // sent to workers: their NCCL watchdog's deadline
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration heartbeat_timeout = absl::Seconds(3);  // a silent worker is lost after this
};

class WorkerPool final : public tpserve::worker::v1::WorkerControl::CallbackService,
                         public StepExecutor,
                         private WorkerConnectionListener {
 public:
  // `auth` null: every peer is admitted (the caller decided that is safe, see CheckWorkerPlaneExposure).
  explicit WorkerPool(const WorkerGroupOptions& options, std::shared_ptr<WorkerAuthenticator> auth = nullptr);
  ~WorkerPool() override;

  // gRPC handlers.
  grpc::ServerBidiReactor<tpserve::worker::v1::WorkerMessage, tpserve::worker::v1::CoordinatorMessage>*
  Connect(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* StoreSet(grpc::CallbackServerContext* context,
                                     const tpserve::worker::v1::StoreSetRequest* request,
                                     tpserve::worker::v1::StoreSetResponse* response) override;
  grpc::ServerUnaryReactor* StoreGet(grpc::CallbackServerContext* context,
                                     const tpserve::worker::v1::StoreGetRequest* request,
                                     tpserve::worker::v1::StoreGetResponse* response) override;

  // True when every rank is connected, loaded, has its KV cache and answered within the heartbeat
  // timeout (a step in flight counts as an answer in progress).
  bool IsReady() const override;
  // Waits until IsReady() or `timeout`; false on timeout or shutdown.
  bool WaitReady(absl::Duration timeout) const override;
  // The group's first load error, if loading failed (shown at startup, and in health details).
  absl::Status load_error() const;
  int num_kv_blocks() const;
  int64_t kv_bytes_per_block() const;  // per worker
  int generation() const override;
  std::vector<WorkerStatus> Status() const;
  // Called (outside the lock) whenever readiness may have changed.
  void SetReadinessListener(std::function<void(bool ready)> listener);
  // Called with Refusal::reason for every refused peer or call. Set before the worker port opens.
  void SetRefusalListener(std::function<void(const std::string& reason)> listener);

  // Sends `plan` to every rank and waits for all results. UNAVAILABLE when the group is not ready or a
  // worker is lost during the step; INTERNAL when a worker reports a step error.
  absl::StatusOr<StepOutcome> RunStep(tpserve::worker::v1::StepPlan plan, absl::Duration timeout) override;

  // Tells every worker to exit and stops the heartbeat thread.
  void Shutdown(const std::string& reason);

 private:
  // The connection and step results of one rank; its membership state lives in membership_.
  struct Slot {
    WorkerConnection* conn = nullptr;
    bool has_result = false;
    tpserve::worker::v1::StepResult result;
  };

  void OnMessage(WorkerConnection* conn, const tpserve::worker::v1::WorkerMessage& msg) override;
  // Registers an authenticated worker's Hello (rank checks, slot, load when the group is whole).
  void RegisterLocked(WorkerConnection* conn, const tpserve::worker::v1::Hello& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs the refusal with the peer address and counts it.
  void ReportRefusal(const std::string& peer, const Refusal& refusal);
  void OnDisconnect(WorkerConnection* conn) override;
  // Sends what a membership event asked for.
  void ApplyLocked(const GroupMembership::Effects& fx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HeartbeatLoop();
  void NotifyReadiness();

  const WorkerGroupOptions options_;
  const std::shared_ptr<WorkerAuthenticator> auth_;
  std::function<void(const std::string&)> refusal_listener_;
  RendezvousStoreService store_service_;  // after auth_: constructed from it
  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  GroupMembership membership_ ABSL_GUARDED_BY(mu_);
  bool step_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t step_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ping_nonce_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void(bool)> readiness_listener_;
  bool last_notified_ready_ = false;
  absl::Mutex listener_mu_;
  std::thread heartbeat_thread_;
};

}  // namespace tpserve::coordinator
