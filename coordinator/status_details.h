// Errors a client program can act on: a reason travels with an absl::Status as a payload, and ToGrpcStatus
// turns the status into a google.rpc.Status carried in the `grpc-status-details-bin` trailer:
//   ErrorInfo{reason, domain "tpserve.v1"}           on every error; reason from WithReason(), else the code's
//                                                    name (e.g. "INVALID_ARGUMENT")
//   BadRequest.FieldViolation{field, description}    on INVALID_ARGUMENT whose message is "<field>: <why>",
//                                                    the form every validator in coordinator/ writes
//   RetryInfo{retry_delay}                           on RESOURCE_EXHAUSTED and UNAVAILABLE
// docs/API.md has the table of codes, reasons and delays; this file is its one owner.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"

namespace tpserve::coordinator {

inline constexpr char kErrorDomain[] = "tpserve.v1";

// ErrorInfo reasons (google.rpc.ErrorInfo.reason, /[A-Z0-9_]+/).
namespace reason {
inline constexpr char kQueueFull[] = "QUEUE_FULL";                        // RESOURCE_EXHAUSTED
inline constexpr char kLoading[] = "LOADING";                             // UNAVAILABLE
inline constexpr char kDraining[] = "DRAINING";                           // UNAVAILABLE
inline constexpr char kWorkerGroupLost[] = "WORKER_GROUP_LOST";           // UNAVAILABLE
inline constexpr char kContextLengthExceeded[] = "CONTEXT_LENGTH_EXCEEDED";  // INVALID_ARGUMENT
}  // namespace reason

// Returns `status` with `reason` attached (replacing any earlier one). OK stays OK.
absl::Status WithReason(absl::Status status, absl::string_view reason);
// The attached reason, or the code's name ("INVALID_ARGUMENT") when none is; "" for OK.
std::string ReasonOf(const absl::Status& status);
// For INVALID_ARGUMENT "<field>: <description>" messages: the field path ("sampling.top_p",
// "chat.messages[0].role"). nullopt for other codes or messages.
std::optional<std::string> FieldOf(const absl::Status& status);
// How long a client should wait before retrying; nullopt when retrying the same request cannot help.
std::optional<absl::Duration> RetryDelayOf(const absl::Status& status);

// The gRPC status with the details above, serialized as google.rpc.Status.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tpserve::coordinator
