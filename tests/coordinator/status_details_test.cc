// ToGrpcStatus: the google.rpc.Status details each kind of error carries (docs/API.md, "Errors"), read back
// with the generated google.rpc protos.
#include "coordinator/status_details.h"

#include "error_details.pb.h"  // google.rpc, from proto/google/rpc/
#include "status.pb.h"  // google.rpc.Status
#include "gtest/gtest.h"

namespace tpserve::coordinator {
namespace {

google::rpc::Status Details(const grpc::Status& s) {
  google::rpc::Status proto;
  EXPECT_TRUE(proto.ParseFromString(s.error_details()));
  return proto;
}

template <typename T>
std::optional<T> Find(const google::rpc::Status& status) {
  for (const auto& any : status.details()) {
    T t;
    if (any.UnpackTo(&t)) return t;
  }
  return std::nullopt;
}

TEST(StatusDetailsTest, InvalidArgumentCarriesTheFieldViolation) {
  grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError("chat.messages[2].role: unknown role \"bot\""));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "chat.messages[2].role: unknown role \"bot\"");
  google::rpc::Status d = Details(s);
  EXPECT_EQ(d.code(), 3);
  EXPECT_EQ(d.message(), s.error_message());
  auto bad = Find<google::rpc::BadRequest>(d);
  ASSERT_TRUE(bad.has_value());
  ASSERT_EQ(bad->field_violations_size(), 1);
  EXPECT_EQ(bad->field_violations(0).field(), "chat.messages[2].role");
  EXPECT_EQ(bad->field_violations(0).description(), "unknown role \"bot\"");
  auto info = Find<google::rpc::ErrorInfo>(d);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "INVALID_ARGUMENT");
  EXPECT_EQ(info->domain(), "tpserve.v1");
  EXPECT_FALSE(Find<google::rpc::RetryInfo>(d).has_value());
}

TEST(StatusDetailsTest, MessagesThatNameNoFieldGetNoViolation) {
  for (const char* msg : {"Allocate: n = -1", "no colon here", "two words: x", "prompt:no space"}) {
    google::rpc::Status d = Details(ToGrpcStatus(absl::InvalidArgumentError(msg)));
    EXPECT_FALSE(Find<google::rpc::BadRequest>(d).has_value()) << msg;
  }
  // Only INVALID_ARGUMENT names fields.
  EXPECT_FALSE(FieldOf(absl::UnavailableError("prompt: x")).has_value());
}

TEST(StatusDetailsTest, ReasonAndRetryDelay) {
  struct Row {
    absl::Status status;
    grpc::StatusCode code;
    std::string reason;
    int64_t retry_ms;  // -1: no RetryInfo
  };
  const Row rows[] = {
      {WithReason(absl::ResourceExhaustedError("request queue is full"), reason::kQueueFull),
       grpc::StatusCode::RESOURCE_EXHAUSTED, "QUEUE_FULL", 1000},
      {WithReason(absl::UnavailableError("model is loading"), reason::kLoading), grpc::StatusCode::UNAVAILABLE,
       "LOADING", 5000},
      {WithReason(absl::UnavailableError("draining"), reason::kDraining), grpc::StatusCode::UNAVAILABLE, "DRAINING",
       1000},
      {WithReason(absl::UnavailableError("lost"), reason::kWorkerGroupLost), grpc::StatusCode::UNAVAILABLE,
       "WORKER_GROUP_LOST", 1000},
      {WithReason(absl::InvalidArgumentError("prompt: too long"), reason::kContextLengthExceeded),
       grpc::StatusCode::INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", -1},
      {absl::UnauthenticatedError("missing key"), grpc::StatusCode::UNAUTHENTICATED, "UNAUTHENTICATED", -1},
      {absl::InternalError("boom"), grpc::StatusCode::INTERNAL, "INTERNAL", -1},
  };
  for (const Row& row : rows) {
    grpc::Status s = ToGrpcStatus(row.status);
    EXPECT_EQ(s.error_code(), row.code) << row.status;
    google::rpc::Status d = Details(s);
    auto info = Find<google::rpc::ErrorInfo>(d);
    ASSERT_TRUE(info.has_value()) << row.status;
    EXPECT_EQ(info->reason(), row.reason);
    EXPECT_EQ(info->domain(), "tpserve.v1");
    auto retry = Find<google::rpc::RetryInfo>(d);
    if (row.retry_ms < 0) {
      EXPECT_FALSE(retry.has_value()) << row.status;
    } else {
      ASSERT_TRUE(retry.has_value()) << row.status;
      EXPECT_EQ(retry->retry_delay().seconds() * 1000 + retry->retry_delay().nanos() / 1000000, row.retry_ms);
    }
  }
}

TEST(StatusDetailsTest, OkHasNoDetailsAndReasonNeedsAnError) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).error_details().empty());
  EXPECT_TRUE(WithReason(absl::OkStatus(), reason::kDraining).ok());
  EXPECT_EQ(ReasonOf(absl::OkStatus()), "");
}

}  // namespace
}  // namespace tpserve::coordinator
