// comm::Store over the coordinator's WorkerControl.StoreSet/StoreGet RPCs: how ranks rendezvous (Gloo pair
// addresses, the NCCL unique id) without a shared filesystem. Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "worker.grpc.pb.h"
#include "worker/comm/communicator.h"

namespace tpserve::worker {

class GrpcStore : public comm::Store {
 public:
  explicit GrpcStore(std::shared_ptr<tpserve::worker::v1::WorkerControl::Stub> stub) : stub_(std::move(stub)) {}
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  std::shared_ptr<tpserve::worker::v1::WorkerControl::Stub> stub_;
};

}  // namespace tpserve::worker
