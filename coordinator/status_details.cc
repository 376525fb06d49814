// Implementation of coordinator/status_details.h.
#include "coordinator/status_details.h"

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "error_details.pb.h"  // google.rpc, from proto/google/rpc/
#include "status.pb.h"  // google.rpc.Status

namespace tpserve::coordinator {

namespace {

// absl::Status payload key for the reason (a type URL, as absl asks).
constexpr char kReasonPayload[] = "type.googleapis.com/tpserve.v1.ErrorReason";

bool IsFieldChar(char c) { return absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '[' || c == ']'; }

}  // namespace

absl::Status WithReason(absl::Status status, absl::string_view reason) {
  if (!status.ok()) status.SetPayload(kReasonPayload, absl::Cord(reason));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  if (status.ok()) return "";
  if (auto p = status.GetPayload(kReasonPayload)) return std::string(*p);
  return absl::StatusCodeToString(status.code());
}

std::optional<std::string> FieldOf(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kInvalidArgument) return std::nullopt;
  absl::string_view m = status.message();
  size_t colon = m.find(": ");
  if (colon == 0 || colon == absl::string_view::npos || !absl::ascii_islower(m[0])) return std::nullopt;
  for (char c : m.substr(0, colon)) {
    if (!IsFieldChar(c)) return std::nullopt;
  }
  return std::string(m.substr(0, colon));
}

std::optional<absl::Duration> RetryDelayOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return absl::Seconds(1);
    case absl::StatusCode::kUnavailable:
      // Loading takes as long as reading the checkpoint; the rest (draining: another replica; a lost group:
      // a re-dial of the workers) is worth a retry after a second.
      return ReasonOf(status) == reason::kLoading ? absl::Seconds(5) : absl::Seconds(1);
    default:
      return std::nullopt;
  }
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status proto;
  proto.set_code(static_cast<int>(status.code()));
  proto.set_message(std::string(status.message()));
  google::rpc::ErrorInfo info;
  info.set_reason(ReasonOf(status));
  info.set_domain(kErrorDomain);
  proto.add_details()->PackFrom(info);
  if (auto field = FieldOf(status)) {
    google::rpc::BadRequest bad;
    auto* v = bad.add_field_violations();
    v->set_field(*field);
    v->set_description(std::string(status.message().substr(field->size() + 2)));
    proto.add_details()->PackFrom(bad);
  }
  if (auto delay = RetryDelayOf(status)) {
    google::rpc::RetryInfo retry;
    const int64_t ms = absl::ToInt64Milliseconds(*delay);
    retry.mutable_retry_delay()->set_seconds(ms / 1000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(ms % 1000) * 1000000);
    proto.add_details()->PackFrom(retry);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      proto.SerializeAsString());
}

}  // namespace tpserve::coordinator
