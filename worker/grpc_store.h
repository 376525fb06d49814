// comm::Store over the coordinator's WorkerControl.StoreSet/StoreGet RPCs: how ranks rendezvous (Gloo pair
// addresses, the NCCL unique id) without a shared filesystem. Every key of one group generation starts with
// that generation's store prefix; Supersede() abandons the waits of older ones. Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "worker.grpc.pb.h"
#include "worker/comm/communicator.h"

namespace tpserve::worker {

class GrpcStore : public comm::Store {
 public:
  explicit GrpcStore(std::shared_ptr<tpserve::worker::v1::WorkerControl::Stub> stub) : stub_(std::move(stub)) {}
  // Token mode: every call then carries the session id and its MAC (common/cluster_auth.h). Call before
  // the store is used (it is not synchronised with calls in flight).
  void SetSession(std::string session_id, std::string key) {
    session_id_ = std::move(session_id);
    key_ = std::move(key);
  }
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

  // A newer generation's LoadCommand arrived: a Get waiting on a key outside `prefix` is cancelled (its
  // rendezvous fails UNAVAILABLE at once instead of after the store timeout, since its peers moved on), and
  // later Gets outside `prefix` fail at once. Called from the stream's reader thread.
  void Supersede(const std::string& prefix);

 private:
  void Sign(grpc::ClientContext* ctx, const char* method, const std::vector<std::string>& fields) const;

  std::shared_ptr<tpserve::worker::v1::WorkerControl::Stub> stub_;
  std::string session_id_;
  std::string key_;
  absl::Mutex mu_;
  std::string current_prefix_ ABSL_GUARDED_BY(mu_);  // "" until Supersede: every key is current
  // Gets in flight, by key (their contexts live on the calling threads' stacks until they unregister).
  std::multimap<std::string, grpc::ClientContext*> waiting_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tpserve::worker
