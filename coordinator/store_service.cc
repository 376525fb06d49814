// Implementation of coordinator/store_service.h.
#include "coordinator/store_service.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tpserve::coordinator {

namespace wv1 = tpserve::worker::v1;

KeyValueStore::KeyValueStore() : timer_([this] { TimerLoop(); }) {}

KeyValueStore::~KeyValueStore() { Shutdown(); }

bool KeyValueStore::AllPresentLocked(const std::vector<std::string>& keys) const {
  for (const auto& k : keys) {
    if (!map_.contains(k)) return false;
  }
  return true;
}

std::vector<std::string> KeyValueStore::ValuesLocked(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(map_.at(k));
  return out;
}

void KeyValueStore::Set(const std::string& key, const std::string& value) {
  std::vector<std::pair<GetCallback, std::vector<std::string>>> ready;
  {
    absl::MutexLock lock(&mu_);
    map_[key] = value;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (AllPresentLocked(it->keys)) {
        ready.emplace_back(std::move(it->done), ValuesLocked(it->keys));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& [done, values] : ready) done(std::move(values));
}

void KeyValueStore::Get(std::vector<std::string> keys, absl::Duration timeout, GetCallback done) {
  absl::StatusOr<std::vector<std::string>> now;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) {
      now = absl::UnavailableError("rendezvous store: the coordinator is shutting down");
    } else if (AllPresentLocked(keys)) {
      now = ValuesLocked(keys);
    } else {
      waiters_.push_back(Waiter{std::move(keys), absl::Now() + timeout, std::move(done)});
      ++waiters_version_;
      return;
    }
  }
  done(std::move(now));
}

void KeyValueStore::TimerLoop() {
  while (true) {
    std::vector<std::pair<GetCallback, absl::Status>> expired;
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return;
      absl::Time next = absl::InfiniteFuture();
      for (const auto& w : waiters_) next = std::min(next, w.deadline);
      const uint64_t version = waiters_version_;
      auto changed = [this, version]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return shutdown_ || waiters_version_ != version;
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), next);
      if (shutdown_) return;
      const absl::Time now = absl::Now();
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->deadline <= now) {
          std::vector<std::string> missing;
          for (const auto& k : it->keys) {
            if (!map_.contains(k)) missing.push_back(k);
          }
          expired.emplace_back(std::move(it->done),
                               absl::DeadlineExceededError(absl::StrCat("rendezvous store: keys not set in time: ",
                                                                        absl::StrJoin(missing, ", "))));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& [done, status] : expired) done(status);
  }
}

void KeyValueStore::Shutdown() {
  std::list<Waiter> pending;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    pending.swap(waiters_);
  }
  if (timer_.joinable() && timer_.get_id() != std::this_thread::get_id()) timer_.join();
  for (auto& w : pending) w.done(absl::UnavailableError("rendezvous store: the coordinator is shutting down"));
}

int KeyValueStore::num_pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiters_.size());
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

RendezvousStoreService::RendezvousStoreService(
    std::shared_ptr<WorkerAuthenticator> auth,
    std::function<void(const std::string& peer, const Refusal& refusal)> report_refusal)
    : auth_(std::move(auth)), report_refusal_(std::move(report_refusal)) {}

grpc::ServerUnaryReactor* RendezvousStoreService::StoreSet(grpc::CallbackServerContext* context,
                                                           const wv1::StoreSetRequest* request,
                                                           wv1::StoreSetResponse* /*response*/) {
  auto* reactor = context->DefaultReactor();
  if (auth_ != nullptr) {
    if (auto r = auth_->CheckStoreCall(*context, "StoreSet", {request->key(), request->value()})) {
      report_refusal_(context->peer(), *r);
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, r->message));
      return reactor;
    }
  }
  store_.Set(request->key(), request->value());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* RendezvousStoreService::StoreGet(grpc::CallbackServerContext* context,
                                                           const wv1::StoreGetRequest* request,
                                                           wv1::StoreGetResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auth_ != nullptr) {
    std::vector<std::string> fields(request->keys().begin(), request->keys().end());
    fields.push_back(std::to_string(request->timeout_ms()));
    if (auto r = auth_->CheckStoreCall(*context, "StoreGet", fields)) {
      report_refusal_(context->peer(), *r);
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, r->message));
      return reactor;
    }
  }
  std::vector<std::string> keys(request->keys().begin(), request->keys().end());
  const int64_t ms = request->timeout_ms() > 0 ? request->timeout_ms() : 60000;
  // request and response stay valid until Finish().
  store_.Get(std::move(keys), absl::Milliseconds(ms),
             [reactor, response](absl::StatusOr<std::vector<std::string>> values) {
               if (!values.ok()) {
                 const auto code = absl::IsDeadlineExceeded(values.status()) ? grpc::StatusCode::DEADLINE_EXCEEDED
                                                                             : grpc::StatusCode::UNAVAILABLE;
                 reactor->Finish(grpc::Status(code, std::string(values.status().message())));
                 return;
               }
               for (auto& v : *values) response->add_values(std::move(v));
               reactor->Finish(grpc::Status::OK);
             });
  return reactor;
}

}  // namespace tpserve::coordinator
