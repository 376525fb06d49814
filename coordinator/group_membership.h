// The tensor-parallel group's membership as a pure state machine: which ranks are registered, loaded and hold
// their KV cache; when to send every rank its LoadCommand (all N connected: a new rendezvous generation) and
// AllocateKv (all loaded: the smallest block count any rank affords, capped); and readiness (all KV-ready and
// heard from within the heartbeat timeout). A lost rank makes the group not ready at once and sends the
// survivors through load again when it returns, since their communicator must be rebuilt with it.
// Failures: before the group first forms, a load or KV error is final (load_error(): the server does not
// start). Once it has served, a failed re-formation (a rendezvous timed out because a survivor was still busy,
// a peer's address went stale) is retried under a new generation after a backoff of 1 s doubling to 16 s,
// until the engine's --recovery-timeout gives up on its requests; answers to an abandoned generation are
// ignored. Before, one failed re-formation left the group unformed for good.
// No gRPC and no clock of its own: WorkerPool (coordinator/worker_pool.h) feeds it events under its lock and
// sends the messages it asks for; tests/coordinator/group_membership_test.cc drives it with tables, the way
// the scheduler is tested. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tpserve::coordinator {

// Per-rank state for metrics and health.
struct WorkerStatus {
  int rank = 0;
  bool connected = false;
  bool loaded = false;
  std::string device;
  std::string hostname;
  int64_t weight_bytes = 0;
  absl::Time last_seen;
  double last_step_seconds = 0;
  double last_allreduce_seconds = 0;
};

struct GroupMembershipOptions {
  int world_size = 1;
  int max_kv_blocks = 0;  // cap on the group's block count (0 = none)
  absl::Duration heartbeat_timeout = absl::Seconds(3);  // a silent rank makes the group not ready after this
};

class GroupMembership {
 public:
  explicit GroupMembership(const GroupMembershipOptions& options);

  // What the caller must send after an event.
  struct Effects {
    std::string refuse;          // non-empty: the registering connection is not a member; tell it to exit so
    bool send_load = false;      // send every rank its LoadCommand for generation()
    int allocate_kv_blocks = 0;  // > 0: send every rank AllocateKv with this many blocks
  };

  // A worker's (authenticated) Hello. Refused: another world size, a rank out of range or already connected,
  // or a protocol version other than kWorkerProtocolVersion (common/worker_protocol.h). `peer` is for log lines.
  Effects Register(int rank, int world_size, uint32_t protocol_version, const std::string& device,
                   const std::string& hostname, const std::string& peer, absl::Time now);
  // A registered rank's stream ended.
  void Disconnect(int rank);
  // Any message from a registered rank (heartbeat answers included).
  void Seen(int rank, absl::Time now);
  // LoadResult from a registered rank for `generation` (answers to another generation are ignored).
  struct LoadReport {
    bool ok = false;
    std::string error;
    int64_t weight_bytes = 0;
    int64_t max_kv_blocks = 0;
    int64_t kv_bytes_per_block = 0;
  };
  Effects Loaded(int rank, int generation, const LoadReport& report, absl::Time now);
  // KvReady from a registered rank for `generation`: ok, or its error.
  void KvReady(int rank, int generation, bool ok, const std::string& error, absl::Time now);
  // The clock: starts a re-formation whose retry is due (called every heartbeat interval).
  Effects Tick(absl::Time now);
  // A step's timings from a registered rank (for Status()).
  void RecordStep(int rank, double step_seconds, double allreduce_seconds);
  // A step did not complete within --step-timeout: the group is not ready, and every connected rank is sent
  // a LoadCommand of a new generation at once. A rank stuck in that step's collective (a hung peer) aborts
  // it when the command arrives (worker/worker_service.cc) and rebuilds its communicator. Before, the group
  // stayed not-ready with every rank connected, and nothing re-formed it until --recovery-timeout.
  Effects StepTimedOut(absl::Time now);
  void Shutdown();

  // Every rank connected and KV-ready, the group formed, not shut down, and each rank heard from within the
  // heartbeat timeout unless `answering[rank]` (a step is in flight that it has not answered yet; may be empty).
  bool IsReady(absl::Time now, const std::vector<bool>& answering = {}) const;
  bool connected(int rank) const { return ranks_[rank].status.connected; }
  bool formed() const { return ready_; }  // formed and not lost since (ignores heartbeats)
  bool shut_down() const { return shutdown_; }
  int generation() const { return generation_; }
  const absl::Status& load_error() const { return load_error_; }  // final: set only before the first formation
  bool retry_pending() const { return retry_at_ != absl::InfiniteFuture(); }
  int num_kv_blocks() const { return num_kv_blocks_; }
  int64_t kv_bytes_per_block() const { return kv_bytes_per_block_; }
  std::vector<WorkerStatus> Status() const;

 private:
  struct Rank {
    WorkerStatus status;
    bool load_sent = false;
    bool kv_ready = false;
    int64_t max_kv_blocks = 0;
    int64_t kv_bytes_per_block = 0;
  };
  bool MaybeStartLoad();
  int MaybeAllocateKv(absl::Time now);
  // A load or KV allocation of the current generation failed: final before the group first formed, else
  // retried after the backoff.
  void Fail(absl::Status error, absl::Time now);
  // Every rank must load again before the group can form (a lost rank, or a failed attempt).
  void AbandonFormation();

  const GroupMembershipOptions options_;
  std::vector<Rank> ranks_;
  int generation_ = 0;
  bool group_loading_ = false;
  bool kv_allocating_ = false;
  bool ready_ = false;
  bool shutdown_ = false;
  bool formed_once_ = false;
  absl::Time retry_at_ = absl::InfiniteFuture();
  absl::Duration retry_backoff_ = absl::Seconds(1);
  absl::Status load_error_;
  int num_kv_blocks_ = 0;
  int64_t kv_bytes_per_block_ = 0;
};

}  // namespace tpserve::coordinator
