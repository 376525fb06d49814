// Implementation of coordinator/worker_connection.h.
#include "coordinator/worker_connection.h"

#include <utility>

namespace tpserve::coordinator {

namespace wv1 = tpserve::worker::v1;

WorkerConnection::WorkerConnection(WorkerConnectionListener* listener, std::string peer,
                                   const std::optional<Refusal>& refusal)
    : listener_(listener), peer_(std::move(peer)) {
  if (refusal) {
    Refuse(refusal->message);
    return;
  }
  StartRead(&in_);
}

bool WorkerConnection::CloseLocked() {
  closed_ = true;
  if (writing_ || finished_) return false;  // OnWriteDone finishes once the queued write is done
  finished_ = true;
  return true;
}

void WorkerConnection::Refuse(const std::string& message) {
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    final_status_ = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, message);
    if (!CloseLocked()) return;
    status = final_status_;
  }
  Finish(status);
}

void WorkerConnection::Send(const wv1::CoordinatorMessage& msg) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  queue_.push_back(msg);
  if (!writing_) {
    writing_ = true;
    StartWrite(&queue_.front());
  }
}

void WorkerConnection::OnReadDone(bool ok) {
  if (!ok) {
    listener_->OnDisconnect(this);
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (!CloseLocked()) return;
      status = final_status_;
    }
    Finish(status);
    return;
  }
  listener_->OnMessage(this, in_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;  // refused: the stream is finishing
  }
  StartRead(&in_);
}

void WorkerConnection::OnWriteDone(bool ok) {
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (!ok) queue_.clear();
    if (!queue_.empty() && !closed_) {
      StartWrite(&queue_.front());
      return;
    }
    writing_ = false;
    if (!closed_ || finished_) return;
    finished_ = true;
    status = final_status_;
  }
  Finish(status);
}

}  // namespace tpserve::coordinator
