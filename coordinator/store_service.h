// The rendezvous key-value store the coordinator serves to workers (WorkerControl.StoreSet/StoreGet):
// Gloo pair addresses and the NCCL unique id travel through it, since pods share no filesystem.
// A StoreGet waits until its keys are set, up to the worker's timeout (as long as the slowest rank's startup).
// Waiting gets hold no thread: a pending get is a callback in the store, completed by the StoreSet that
// supplies its last key, by the store's one timer thread at its deadline, or by Shutdown(). Before, each
// StoreGet started a detached thread that nothing joined, and that could outlive the store at shutdown.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/worker_auth.h"
#include "worker.grpc.pb.h"

namespace tpserve::coordinator {

// Thread-safe.
class KeyValueStore {
 public:
  using GetCallback = std::function<void(absl::StatusOr<std::vector<std::string>> values)>;

  KeyValueStore();
  ~KeyValueStore();  // Shutdown()
  KeyValueStore(const KeyValueStore&) = delete;
  KeyValueStore& operator=(const KeyValueStore&) = delete;

  void Set(const std::string& key, const std::string& value);
  // Calls `done` exactly once, outside the store's lock: with the values in `keys` order once every key exists
  // (at once if they do), DEADLINE_EXCEEDED naming the missing keys after `timeout`, or UNAVAILABLE when the
  // store shuts down first. It runs on the caller's thread, Set's caller's, the timer thread or Shutdown's.
  void Get(std::vector<std::string> keys, absl::Duration timeout, GetCallback done);
  // Drops every key that starts with prefix (an old TP-group generation).
  void ErasePrefix(const std::string& prefix);
  // Completes every pending Get with UNAVAILABLE and joins the timer thread; later Gets fail at once. Idempotent.
  void Shutdown();

  int num_pending() const;  // Gets waiting for keys (tests)

 private:
  struct Waiter {
    std::vector<std::string> keys;
    absl::Time deadline;
    GetCallback done;
  };
  bool AllPresentLocked(const std::vector<std::string>& keys) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> ValuesLocked(const std::vector<std::string>& keys) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TimerLoop();

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> map_ ABSL_GUARDED_BY(mu_);
  std::list<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t waiters_version_ ABSL_GUARDED_BY(mu_) = 0;  // bumped on every new waiter: the timer re-plans
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::thread timer_;
};

// The StoreSet / StoreGet handlers of WorkerControl (WorkerPool forwards them here): authenticate the call
// (coordinator/worker_auth.h), then read or write the store. Thread-safe.
class RendezvousStoreService {
 public:
  // `auth` null: every call is admitted. `report_refusal(peer, refusal)` logs and counts a refused call.
  RendezvousStoreService(std::shared_ptr<WorkerAuthenticator> auth,
                         std::function<void(const std::string& peer, const Refusal& refusal)> report_refusal);

  grpc::ServerUnaryReactor* StoreSet(grpc::CallbackServerContext* context,
                                     const tpserve::worker::v1::StoreSetRequest* request,
                                     tpserve::worker::v1::StoreSetResponse* response);
  grpc::ServerUnaryReactor* StoreGet(grpc::CallbackServerContext* context,
                                     const tpserve::worker::v1::StoreGetRequest* request,
                                     tpserve::worker::v1::StoreGetResponse* response);

  KeyValueStore& store() { return store_; }
  // Answers every waiting StoreGet UNAVAILABLE (before the worker port's server shuts down).
  void Shutdown() { store_.Shutdown(); }

 private:
  const std::shared_ptr<WorkerAuthenticator> auth_;
  const std::function<void(const std::string&, const Refusal&)> report_refusal_;
  KeyValueStore store_;
};

}  // namespace tpserve::coordinator
