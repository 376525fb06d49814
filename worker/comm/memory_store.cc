// In-process rendezvous store: a mutex-guarded map whose Get waits on a condition.
#include "worker/comm/memory_store.h"

#include "absl/strings/str_cat.h"

namespace tpserve::comm {

absl::Status MemoryStore::Set(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mu_);
  map_[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemoryStore::Get(const std::string& key, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto present = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return map_.contains(key); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&present), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous key '", key, "' did not appear within ", absl::FormatDuration(timeout)));
  }
  return map_.at(key);
}

}  // namespace tpserve::comm
