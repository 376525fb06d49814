// comm::Store over the coordinator's WorkerControl.StoreSet/StoreGet RPCs: how ranks rendezvous (Gloo pair
// addresses, the NCCL unique id) without a shared filesystem. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

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

 private:
  void Sign(grpc::ClientContext* ctx, const char* method, const std::vector<std::string>& fields) const;

  std::shared_ptr<tpserve::worker::v1::WorkerControl::Stub> stub_;
  std::string session_id_;
  std::string key_;
};

}  // namespace tpserve::worker
