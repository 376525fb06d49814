// The engine loop: one thread that owns the scheduler, turns each Schedule() into a StepPlan that a
// StepExecutor (coordinator/step_executor.h: the worker pool, or a fake in tests) runs on every worker,
// applies the sampled tokens, and streams results to request sinks. Submit/Cancel are thread-safe and never
// block on a step: they post to an inbox the loop drains between steps.
// When the worker group is lost mid-step, running requests are preempted (their KV is gone) and held; they
// are replayed from their token history when the group is whole again, or fail UNAVAILABLE after
// recovery_timeout.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/engine/scheduler.h"
#include "coordinator/metrics.h"
#include "coordinator/request_state.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/step_executor.h"

namespace tpserve::coordinator {

struct EngineOptions {
  SchedulerConfig scheduler;
  // --max-queued-requests: the one queue limit. Counts requests submitted and never scheduled yet; beyond it
  // Submit answers RESOURCE_EXHAUSTED (ErrorInfo QUEUE_FULL) at once. A preempted request, or one replayed
  // after a worker loss, was admitted already and is never counted or refused.
  int max_queued_requests = 1024;
  absl::Duration step_timeout = absl::Seconds(600);
  absl::Duration recovery_timeout = absl::Seconds(60);
  bool log_prompts = false;  // --log-prompts: one INFO line per request with its prompt text (never otherwise)
  bool log_requests = true;  // one structured line per finished request
};

class Engine {
 public:
  Engine(const EngineOptions& options, StepExecutor* executor, const Tokenizer* tokenizer, Metrics* metrics);
  ~Engine();

  void Start();
  // Stops the loop; requests still in flight end UNAVAILABLE (reason DRAINING).
  void Stop();

  // Queues a validated request. RESOURCE_EXHAUSTED when the waiting queue is full; UNAVAILABLE while
  // draining. Returns the engine's handle for Cancel().
  absl::StatusOr<uint64_t> Submit(RequestSpec spec, std::shared_ptr<RequestSink> sink);
  // Aborts at the next step boundary and frees the request's KV blocks; the sink gets CANCELLED.
  void Cancel(uint64_t handle);

  // Drain: new submissions get UNAVAILABLE; in-flight ones finish.
  void StopAccepting();
  bool accepting() const { return accepting_.load(); }
  int num_in_flight() const { return in_flight_.load(); }
  // Snapshot for metrics/tests.
  int num_free_blocks() const { return free_blocks_.load(); }
  int num_total_blocks() const { return options_.scheduler.num_blocks; }

 private:
  struct Inbox {
    std::deque<std::unique_ptr<RequestState>> submitted;
    std::deque<uint64_t> cancelled;
  };

  void Loop();
  void DrainInbox();
  bool RunOneStep();  // false when there was nothing runnable
  void FinishRequest(RequestState& r, tpserve::v1::FinishReason reason, tpserve::v1::GenerateStreamResponse* last);
  void FailRequest(uint64_t seq_id, const absl::Status& status);
  void OnGroupLost(const absl::Status& status);
  void RequeueAll();
  // Speculative decoding counters (metrics, usage.speculative) of a step's verified proposals.
  void RecordSpeculation(const SchedulerOutput& out,
                         const absl::flat_hash_map<uint64_t, std::vector<int32_t>>& sampled);
  void UpdateGauges();

  const EngineOptions options_;
  StepExecutor* executor_;
  const Tokenizer* tokenizer_;
  Metrics* metrics_;
  std::unique_ptr<Scheduler> scheduler_;

  absl::Mutex inbox_mu_;
  Inbox inbox_ ABSL_GUARDED_BY(inbox_mu_);
  bool stop_ ABSL_GUARDED_BY(inbox_mu_) = false;
  std::atomic<bool> accepting_{true};
  std::atomic<int> in_flight_{0};
  std::atomic<int> queued_{0};  // submitted, never scheduled yet: what max_queued_requests limits
  std::atomic<int> free_blocks_{0};
  std::atomic<uint64_t> next_id_{1};

  // Engine-thread state.
  absl::flat_hash_map<uint64_t, std::unique_ptr<RequestState>> requests_;
  // SchedulerOutput.finished not yet sent in a StepPlan (a Schedule() that ran nothing carries no plan). After a
  // re-formed group the ids are unknown to the new workers, which ignore them.
  std::vector<uint64_t> undelivered_finished_;
  absl::Time group_lost_at_ = absl::InfinitePast();
  int generation_seen_ = 0;
  std::thread thread_;
};

}  // namespace tpserve::coordinator
