// Implementation of worker/grpc_store.h.
#include "worker/grpc_store.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/cluster_auth.h"
#include "grpcpp/client_context.h"

namespace tpserve::worker {

namespace wv1 = tpserve::worker::v1;

void GrpcStore::Sign(grpc::ClientContext* ctx, const char* method, const std::vector<std::string>& fields) const {
  if (session_id_.empty()) return;
  ctx->AddMetadata(cluster_auth::kSessionMetadata, session_id_);
  ctx->AddMetadata(cluster_auth::kStoreMacMetadata,
                   cluster_auth::ToHex(cluster_auth::StoreCallMac(key_, method, fields)));
}

absl::Status GrpcStore::Set(const std::string& key, const std::string& value) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  wv1::StoreSetRequest req;
  req.set_key(key);
  req.set_value(value);
  Sign(&ctx, "StoreSet", {key, value});
  wv1::StoreSetResponse resp;
  grpc::Status s = stub_->StoreSet(&ctx, req, &resp);
  if (!s.ok()) return absl::UnavailableError(absl::StrCat("rendezvous store set '", key, "': ", s.error_message()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> GrpcStore::Get(const std::string& key, absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout) + 5000));
  wv1::StoreGetRequest req;
  req.add_keys(key);
  req.set_timeout_ms(absl::ToInt64Milliseconds(timeout));
  Sign(&ctx, "StoreGet", {key, std::to_string(req.timeout_ms())});
  std::multimap<std::string, grpc::ClientContext*>::iterator registered;
  {
    absl::MutexLock lock(&mu_);
    if (!absl::StartsWith(key, current_prefix_)) {
      return absl::UnavailableError(absl::StrCat("rendezvous store: '", key, "' belongs to a group generation that a ",
                                                 "newer LoadCommand (store prefix '", current_prefix_,
                                                 "') replaced"));
    }
    registered = waiting_.emplace(key, &ctx);
  }
  wv1::StoreGetResponse resp;
  grpc::Status s = stub_->StoreGet(&ctx, req, &resp);
  {
    absl::MutexLock lock(&mu_);
    waiting_.erase(registered);
    if (s.error_code() == grpc::StatusCode::CANCELLED && !absl::StartsWith(key, current_prefix_)) {
      return absl::UnavailableError(absl::StrCat("rendezvous store: the wait for '", key, "' was abandoned: a newer ",
                                                 "LoadCommand (store prefix '", current_prefix_, "') replaced it"));
    }
  }
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::DeadlineExceededError(absl::StrCat("rendezvous store: '", key, "' not set within ",
                                                    absl::FormatDuration(timeout), ": ", s.error_message()));
  }
  if (!s.ok() || resp.values_size() != 1) {
    return absl::UnavailableError(absl::StrCat("rendezvous store get '", key, "': ", s.error_message()));
  }
  return resp.values(0);
}

void GrpcStore::Supersede(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  current_prefix_ = prefix;
  for (auto& [key, ctx] : waiting_) {
    if (!absl::StartsWith(key, prefix)) ctx->TryCancel();
  }
}

}  // namespace tpserve::worker
