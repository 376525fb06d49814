// Implementation of bench/loadgen/grpc_client.h. Each request is one ClientReadReactor whose callbacks run on
// gRPC's callback threads and only append timestamps.
#include "bench/loadgen/grpc_client.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/credentials.h"
#include "grpcpp/grpcpp.h"

namespace tpserve::bench {
namespace {

constexpr int kRpcDeadlineSeconds = 60;

class StreamCall : public Call, public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  StreamCall(const GrpcTarget* target, const RequestSpec& spec, RequestRecord rec, double timeout_s,
             CallObserver* observer)
      : observer_(observer), request_(spec.request) {
    record = std::move(rec);
    target->Authorize(&ctx_);
    ctx_.set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
    target->stub()->async()->GenerateStream(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    const double t = observer_->Now();
    const auto t0 = std::chrono::steady_clock::now();
    if (ok) {
      const int n = response_.token_ids_size();
      if (response_.prompt_token_ids_size() > 0) record.stream_prompt_ids = response_.prompt_token_ids_size();
      record.AddChunk(t, n);
      if (n > 0) observer_->OnTokens(n);
      if (response_.has_usage()) {
        record.got_usage = true;
        record.prompt_tokens = response_.usage().prompt_tokens();
        record.completion_tokens = response_.usage().completion_tokens();
        record.cached_prompt_tokens = response_.usage().cached_prompt_tokens();
      }
      if (response_.finish_reason() != 0) record.finish_reason = response_.finish_reason();
      StartRead(&response_);
    }
    record.callback_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  void OnDone(const grpc::Status& s) override {
    record.end_s = observer_->Now();
    record.status_code = s.error_code();
    record.error = s.error_message();
    if (s.ok() && !record.got_usage) {
      record.status_code = grpc::StatusCode::UNKNOWN;
      record.error = "stream ended without a final message carrying usage";
    }
    observer_->OnDone();  // last touch: the dispatcher may read the record from here on
  }

  void Cancel() override { ctx_.TryCancel(); }

 private:
  CallObserver* observer_;
  grpc::ClientContext ctx_;
  v1::GenerateRequest request_;
  v1::GenerateStreamResponse response_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcTarget>> GrpcTarget::Connect(const GrpcOptions& o) {
  TlsFiles tls;
  tls.ca = o.tls_ca;
  auto creds = MakeChannelCredentials(tls);
  if (!creds.ok()) return absl::InvalidArgumentError(absl::StrCat("--tls-ca: ", creds.status().message()));
  std::unique_ptr<GrpcTarget> t(new GrpcTarget());
  t->api_key_ = o.api_key;
  t->stub_ = v1::Generation::NewStub(grpc::CreateChannel(o.server, *creds));
  // Fail fast (and readably) when nothing listens there; waits briefly for a server still starting.
  grpc::ClientContext ctx;
  t->Authorize(&ctx);
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::Status s = t->stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &t->info_);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("--server ", o.server, " did not answer GetModelInfo: ", s.error_message()));
  }
  return t;
}

void GrpcTarget::Authorize(grpc::ClientContext* ctx) const {
  if (!api_key_.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key_);
}

absl::StatusOr<std::vector<int32_t>> GrpcTarget::Tokenize(const v1::TokenizeRequest& req) {
  grpc::ClientContext ctx;
  Authorize(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(kRpcDeadlineSeconds));
  v1::TokenizeResponse resp;
  grpc::Status s = stub_->Tokenize(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("Tokenize RPC failed (", s.error_code(), "): ", s.error_message()));
  }
  return std::vector<int32_t>(resp.ids().begin(), resp.ids().end());
}

std::unique_ptr<Call> GrpcLoadClient::Start(const RequestSpec& spec, RequestRecord record, double timeout_s,
                                            CallObserver* observer) {
  return std::make_unique<StreamCall>(target_, spec, std::move(record), timeout_s, observer);
}

}  // namespace tpserve::bench
