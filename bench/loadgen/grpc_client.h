// tpserve over its gRPC API: the connection (TLS and API key as `tpserve generate` sends them), the Tokenize
// RPC as the workload's tokenizer, and GenerateStream calls as a LoadClient (callback API: no thread per
// request).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/prompt_tokenizer.h"
#include "generation.grpc.pb.h"

namespace tpserve::bench {

struct GrpcOptions {
  std::string server;   // HOST:PORT
  std::string tls_ca;   // non-empty: TLS, verifying the server against this PEM CA bundle
  std::string api_key;  // non-empty: every call carries metadata 'authorization: Bearer <key>'
};

// Thread-safe after Connect.
class GrpcTarget : public PromptTokenizer {
 public:
  // Waits up to 20 s for a server still starting; UNAVAILABLE (with the server's message, e.g. a wrong API
  // key) when GetModelInfo does not answer, INVALID_ARGUMENT for an unreadable CA file.
  static absl::StatusOr<std::unique_ptr<GrpcTarget>> Connect(const GrpcOptions& options);

  v1::Generation::Stub* stub() const { return stub_.get(); }
  const v1::ModelInfo& info() const { return info_; }
  // Adds the API key's metadata to a call about to start.
  void Authorize(grpc::ClientContext* ctx) const;

  absl::StatusOr<std::vector<int32_t>> Tokenize(const v1::TokenizeRequest& req) override;
  int bos_id() const override { return info_.bos_token_id(); }
  int max_context() const override { return info_.max_context_length(); }

 private:
  GrpcTarget() = default;
  std::string api_key_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  v1::ModelInfo info_;
};

class GrpcLoadClient : public LoadClient {
 public:
  explicit GrpcLoadClient(const GrpcTarget* target) : target_(target) {}
  std::unique_ptr<Call> Start(const RequestSpec& spec, RequestRecord record, double timeout_s,
                              CallObserver* observer) override;

 private:
  const GrpcTarget* target_;
};

}  // namespace tpserve::bench
