// The rendezvous key-value store the coordinator serves to workers (WorkerControl.StoreSet/StoreGet):
// Gloo pair addresses and the NCCL unique id travel through it, since pods share no filesystem.
// Thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tpserve::coordinator {

class KeyValueStore {
 public:
  void Set(const std::string& key, const std::string& value);
  // Waits until every key exists; DEADLINE_EXCEEDED naming the missing keys after `timeout`.
  absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys, absl::Duration timeout);
  // Drops every key that starts with prefix (an old TP-group generation).
  void ErasePrefix(const std::string& prefix);

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> map_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tpserve::coordinator
