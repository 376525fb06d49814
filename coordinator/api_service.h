// The public tpserve.v1.Generation service (gRPC callback API): validation -> engine -> unary or streaming
// replies. One reactor class per RPC kind; a client cancel, deadline or disconnect cancels the request in the
// engine (its KV blocks are freed at the next step).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/model_config.h"
#include "coordinator/engine.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/validation.h"
#include "generation.grpc.pb.h"

namespace tpserve::coordinator {

struct ApiServiceOptions {
  std::string model_name;
  ModelConfig model_config;
  ValidationLimits limits;
  int tensor_parallel_size = 1;
  std::string dtype;
  std::string weight_format;  // ModelInfo.weight_format
  std::string api_key;  // non-empty: every call needs metadata "authorization: Bearer <api_key>"
};

class GenerationService final : public tpserve::v1::Generation::CallbackService {
 public:
  GenerationService(const ApiServiceOptions& options, const Tokenizer* tokenizer);
  // GetModelInfo.device: what the registered workers run on ("cpu", "cuda"), set when the group forms.
  void SetDevice(std::string device) {
    absl::MutexLock lock(&device_mu_);
    device_ = std::move(device);
  }

  // The engine appears once the worker group is loaded; until then calls get UNAVAILABLE.
  void SetEngine(Engine* engine, int kv_blocks, int kv_block_size);
  Engine* engine() const { return engine_.load(); }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context, const tpserve::v1::GenerateRequest* request,
                                     tpserve::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<tpserve::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const tpserve::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const tpserve::v1::TokenizeRequest* request,
                                     tpserve::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const tpserve::v1::GetModelInfoRequest* request,
                                         tpserve::v1::ModelInfo* response) override;

 private:
  // UNAUTHENTICATED unless the call carries the API key (always OK when no key is configured).
  grpc::Status Authorize(grpc::CallbackServerContext* context) const;
  template <typename Reactor>
  Reactor* StartGeneration(grpc::CallbackServerContext* context, const tpserve::v1::GenerateRequest& request,
                           Reactor* reactor);

  const ApiServiceOptions options_;
  const Tokenizer* tokenizer_;
  std::atomic<Engine*> engine_{nullptr};
  std::atomic<int> kv_blocks_{0};
  std::atomic<int> kv_block_size_{0};
  absl::Mutex device_mu_;
  std::string device_ ABSL_GUARDED_BY(device_mu_);
};

}  // namespace tpserve::coordinator
