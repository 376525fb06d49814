// The engine's view of the worker group: run one StepPlan on every rank, say whether the group can run one
// now, and say when it was re-formed. WorkerPool (coordinator/worker_pool.h) implements it over the worker
// control streams; tests/coordinator/engine_test.cc implements it in memory, so cancellation, replay, drain
// and backpressure are tested through the real Engine without starting a process (vLLM's EngineCore drives
// an Executor the same way).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker.pb.h"

namespace tpserve::coordinator {

struct StepOutcome {
  tpserve::worker::v1::StepResult result;   // rank 0's (holds the sampled tokens)
  std::vector<double> step_seconds;         // per rank
  std::vector<double> allreduce_seconds;    // per rank
};

// Thread-safe: the engine thread runs steps while health probes ask IsReady().
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;

  // Sends `plan` to every rank and waits for all results. UNAVAILABLE when the group is not ready or is lost
  // during the step (the engine holds its requests and replays them); any other error fails the step's
  // requests with that status.
  virtual absl::StatusOr<StepOutcome> RunStep(tpserve::worker::v1::StepPlan plan, absl::Duration timeout) = 0;
  // True when a step can run now (every rank connected, loaded, KV allocated, alive).
  virtual bool IsReady() const = 0;
  // Waits until IsReady() or `timeout`; false on timeout or shutdown.
  virtual bool WaitReady(absl::Duration timeout) const = 0;
  // Changes whenever the group is re-formed: every rank's KV cache and sampler state are new, so every
  // request the engine holds must start again from its token history.
  virtual int generation() const = 0;
};

}  // namespace tpserve::coordinator
