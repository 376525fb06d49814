// Flags shared by `tpserve serve` and `tpserve coordinator`, and the coordinator run loop (signals, drain).
#pragma once

#include <functional>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_server.h"

namespace tpserve::cli {

// Builds the coordinator's options from the flags. INVALID_ARGUMENT naming the flag for bad values.
absl::StatusOr<coordinator::CoordinatorOptions> CoordinatorOptionsFromFlags();

struct CoordinatorHooks {
  // Called once the ports are bound (serve launches its workers here).
  std::function<absl::Status(coordinator::CoordinatorServer&)> on_started;
  // Called after shutdown (serve reaps its workers here).
  std::function<void()> on_exit;
};

// Runs a coordinator until SIGTERM/SIGINT: first signal drains (--drain-timeout) then exits 0; a second
// signal exits at once. Returns the exit code.
int RunCoordinator(coordinator::CoordinatorOptions options, const CoordinatorHooks& hooks);

// "2GiB", "512MiB", "1.5G", "4096" -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);

}  // namespace tpserve::cli
