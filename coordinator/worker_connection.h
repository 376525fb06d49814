// One worker's Connect stream on the coordinator (the control-stream reactor): reads continuously and hands each
// message to its listener (WorkerPool); writes are queued, one in flight at a time as the callback API requires.
// The listener holds a raw pointer only while the stream is open; the reactor deletes itself in OnDone.
// Thread-safe: Send and Refuse may be called from any thread.
#pragma once

#include <deque>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/tsan_annotations.h"
#include "coordinator/worker_auth.h"
#include "worker.grpc.pb.h"

namespace tpserve::coordinator {

class WorkerConnection;

// Receives a connection's events, on gRPC threads.
class WorkerConnectionListener {
 public:
  virtual ~WorkerConnectionListener() = default;
  virtual void OnMessage(WorkerConnection* conn, const tpserve::worker::v1::WorkerMessage& msg) = 0;
  // The stream ended (the worker is gone); no more messages follow.
  virtual void OnDisconnect(WorkerConnection* conn) = 0;
};

class WorkerConnection final
    : public grpc::ServerBidiReactor<tpserve::worker::v1::WorkerMessage, tpserve::worker::v1::CoordinatorMessage> {
 public:
  // With a refusal the stream ends at once with UNAUTHENTICATED and reads nothing.
  WorkerConnection(WorkerConnectionListener* listener, std::string peer,
                   const std::optional<Refusal>& refusal = std::nullopt);

  const std::string& peer() const { return peer_; }
  // Set by the listener under its lock.
  int rank = -1;                        // once registered
  enum class Auth { kNew, kChallenged, kAuthenticated, kRefused } auth = Auth::kNew;
  WorkerAuthenticator::Challenge challenge;  // kChallenged: what the AuthResponse must prove
  tpserve::worker::v1::Hello hello;          // kChallenged: registered once the proof checks out
  std::string session_id;                    // kAuthenticated (token mode): the store session to close

  // Ends the stream with UNAUTHENTICATED after any queued write; nothing more is read or sent.
  void Refuse(const std::string& message);
  void Send(const tpserve::worker::v1::CoordinatorMessage& msg);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override {
    TsanAcquire(static_cast<grpc::internal::ServerReactor*>(this));  // see common/tsan_annotations.h
    delete this;
  }
  void OnCancel() override {}  // touches nothing, so needs no TsanAcquire/TsanRelease (common/tsan_annotations.h)

 private:
  // Marks the stream closed; true when the caller must call Finish(final_status_) (after unlocking: OnDone may
  // delete this as soon as Finish is called, so no lock of ours may be held then).
  bool CloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  WorkerConnectionListener* const listener_;
  const std::string peer_;
  tpserve::worker::v1::WorkerMessage in_;
  absl::Mutex mu_;
  std::deque<tpserve::worker::v1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_) = grpc::Status::OK;
};

}  // namespace tpserve::coordinator
