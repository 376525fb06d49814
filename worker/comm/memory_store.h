// An in-process rendezvous Store (comm::Store) for ranks running as threads of one process: tests,
// benchmarks and single-host runs that need no coordinator. Thread-safe.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "worker/comm/communicator.h"

namespace tpserve::comm {

class MemoryStore : public Store {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  // Waits until `key` exists; DEADLINE_EXCEEDED naming the key after `timeout`.
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> map_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tpserve::comm
