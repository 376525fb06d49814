// Implementation of coordinator/store_service.h.
#include "coordinator/store_service.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tpserve::coordinator {

void KeyValueStore::Set(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mu_);
  map_[key] = value;
}

absl::StatusOr<std::vector<std::string>> KeyValueStore::Get(const std::vector<std::string>& keys,
                                                            absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto all_present = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& k : keys) {
      if (!map_.contains(k)) return false;
    }
    return true;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&all_present), timeout)) {
    std::vector<std::string> missing;
    for (const auto& k : keys) {
      if (!map_.contains(k)) missing.push_back(k);
    }
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous store: keys not set in time: ", absl::StrJoin(missing, ", ")));
  }
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(map_.at(k));
  return out;
}

void KeyValueStore::ErasePrefix(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  for (auto it = map_.begin(); it != map_.end();) {
    if (absl::StartsWith(it->first, prefix)) {
      map_.erase(it++);
    } else {
      ++it;
    }
  }
}

}  // namespace tpserve::coordinator
