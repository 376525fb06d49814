// Implementation of coordinator/worker_pool.h.
#include "coordinator/worker_pool.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tpserve::coordinator {

namespace wv1 = tpserve::worker::v1;

// One worker's Connect stream. Reads are continuous; writes are queued (one in flight at a time, as the
// callback API requires). The pool holds a raw pointer only while the stream is open; the reactor deletes
// itself in OnDone.
class WorkerConnection final : public grpc::ServerBidiReactor<wv1::WorkerMessage, wv1::CoordinatorMessage> {
 public:
  // With a refusal the stream ends at once with UNAUTHENTICATED and reads nothing.
  WorkerConnection(WorkerPool* pool, std::string peer, const std::optional<Refusal>& refusal = std::nullopt)
      : pool_(pool), peer_(std::move(peer)) {
    if (refusal) {
      Refuse(refusal->message);
      return;
    }
    StartRead(&in_);
  }

  const std::string& peer() const { return peer_; }
  // Set by the pool under its lock.
  int rank = -1;                        // once registered
  enum class Auth { kNew, kChallenged, kAuthenticated, kRefused } auth = Auth::kNew;
  WorkerAuthenticator::Challenge challenge;  // kChallenged: what the AuthResponse must prove
  tpserve::worker::v1::Hello hello;          // kChallenged: registered once the proof checks out
  std::string session_id;                    // kAuthenticated (token mode): the store session to close

  // Ends the stream with UNAUTHENTICATED after any queued write; nothing more is read or sent.
  void Refuse(const std::string& message) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    final_status_ = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, message);
    if (!writing_ && !finished_) {
      finished_ = true;
      Finish(final_status_);
    }
  }

  void Send(const wv1::CoordinatorMessage& msg) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    queue_.push_back(msg);
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      pool_->OnDisconnect(this);
      CloseAndMaybeFinish();
      return;
    }
    pool_->OnMessage(this, in_);
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return;  // refused: the stream is finishing
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (!ok) {
      queue_.clear();
    }
    if (!queue_.empty() && !closed_) {
      StartWrite(&queue_.front());
      return;
    }
    writing_ = false;
    if (closed_ && !finished_) {
      finished_ = true;
      Finish(final_status_);
    }
  }

  void OnDone() override { delete this; }
  void OnCancel() override {}

 private:
  void CloseAndMaybeFinish() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    if (!writing_ && !finished_) {
      finished_ = true;
      Finish(final_status_);
    }
  }

  WorkerPool* pool_;
  std::string peer_;
  wv1::WorkerMessage in_;
  absl::Mutex mu_;
  std::deque<wv1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_) = grpc::Status::OK;
};

WorkerPool::WorkerPool(const WorkerGroupOptions& options, std::shared_ptr<WorkerAuthenticator> auth)
    : options_(options), auth_(std::move(auth)) {
  slots_.resize(options_.world_size);
  for (int r = 0; r < options_.world_size; ++r) slots_[r].status.rank = r;
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
}

WorkerPool::~WorkerPool() {
  Shutdown("coordinator exiting");
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void WorkerPool::SetRefusalListener(std::function<void(const std::string&)> listener) {
  refusal_listener_ = std::move(listener);
}

void WorkerPool::ReportRefusal(const std::string& peer, const Refusal& refusal) {
  TP_LOG(WARNING) << "refused worker-plane peer " << peer << " (" << refusal.reason << "): " << refusal.message;
  if (refusal_listener_) refusal_listener_(refusal.reason);
}

grpc::ServerBidiReactor<wv1::WorkerMessage, wv1::CoordinatorMessage>* WorkerPool::Connect(
    grpc::CallbackServerContext* context) {
  std::optional<Refusal> refusal;
  if (auth_ != nullptr) refusal = auth_->CheckPeer(*context->auth_context());
  if (refusal) ReportRefusal(context->peer(), *refusal);
  return new WorkerConnection(this, context->peer(), refusal);
}

grpc::ServerUnaryReactor* WorkerPool::StoreSet(grpc::CallbackServerContext* context,
                                               const wv1::StoreSetRequest* request,
                                               wv1::StoreSetResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auth_ != nullptr) {
    if (auto r = auth_->CheckStoreCall(*context, "StoreSet", {request->key(), request->value()})) {
      ReportRefusal(context->peer(), *r);
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, r->message));
      return reactor;
    }
  }
  store_.Set(request->key(), request->value());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerPool::StoreGet(grpc::CallbackServerContext* context,
                                               const wv1::StoreGetRequest* request,
                                               wv1::StoreGetResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auth_ != nullptr) {
    std::vector<std::string> fields(request->keys().begin(), request->keys().end());
    fields.push_back(std::to_string(request->timeout_ms()));
    if (auto r = auth_->CheckStoreCall(*context, "StoreGet", fields)) {
      ReportRefusal(context->peer(), *r);
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, r->message));
      return reactor;
    }
  }
  // Waiting may take as long as the slowest rank's startup: never block a callback thread on it.
  std::thread([this, request, response, reactor] {
    std::vector<std::string> keys(request->keys().begin(), request->keys().end());
    int64_t ms = request->timeout_ms() > 0 ? request->timeout_ms() : 60000;
    auto values = store_.Get(keys, absl::Milliseconds(ms));
    if (!values.ok()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, std::string(values.status().message())));
      return;
    }
    for (auto& v : *values) response->add_values(std::move(v));
    reactor->Finish(grpc::Status::OK);
  }).detach();
  return reactor;
}

void WorkerPool::RegisterLocked(WorkerConnection* conn, const wv1::Hello& h) {
  wv1::CoordinatorMessage reply;
  if (h.world_size() != options_.world_size || h.rank() < 0 || h.rank() >= options_.world_size) {
    TP_LOG(ERROR) << "worker " << conn->peer() << " registered as rank " << h.rank() << " of "
                  << h.world_size() << ", but this coordinator runs a group of " << options_.world_size
                  << "; telling it to exit";
    reply.mutable_shutdown()->set_reason(absl::StrCat("coordinator expects --world-size ", options_.world_size,
                                                      " and a rank in [0, ", options_.world_size, ")"));
    conn->Send(reply);
    return;
  }
  Slot& slot = slots_[h.rank()];
  if (slot.conn != nullptr) {
    TP_LOG(ERROR) << "rank " << h.rank() << " registered twice (" << conn->peer() << "); refusing";
    reply.mutable_shutdown()->set_reason(absl::StrCat("rank ", h.rank(), " is already connected"));
    conn->Send(reply);
    return;
  }
  conn->rank = h.rank();
  slot.conn = conn;
  slot.status.connected = true;
  slot.status.loaded = false;
  slot.status.device = h.device();
  slot.status.hostname = h.hostname();
  slot.status.last_seen = absl::Now();
  slot.load_sent = false;
  slot.kv_ready = false;
  TP_LOG(INFO) << "worker rank " << h.rank() << " registered from " << h.hostname() << " (" << conn->peer()
               << ", device " << h.device() << ", pid " << h.pid() << ")";
  MaybeStartLoadLocked();
}

void WorkerPool::OnMessage(WorkerConnection* conn, const wv1::WorkerMessage& msg) {
  std::optional<Refusal> refusal;
  {
    absl::MutexLock lock(&mu_);
    using Auth = WorkerConnection::Auth;
    const bool token = auth_ != nullptr && auth_->uses_token();
    if (conn->auth == Auth::kRefused) return;
    if (msg.has_hello() || msg.has_auth_response()) {
      if (msg.has_hello() && !token && conn->auth == Auth::kNew) {
        conn->auth = Auth::kAuthenticated;
        RegisterLocked(conn, msg.hello());
        return;
      }
      if (msg.has_hello() && conn->auth == Auth::kNew) {
        wv1::CoordinatorMessage challenge;
        refusal = auth_->NewChallenge(msg.hello(), &conn->challenge, challenge.mutable_auth_challenge());
        if (!refusal) {
          conn->hello = msg.hello();
          conn->auth = Auth::kChallenged;
          conn->Send(challenge);
          return;
        }
      } else if (msg.has_auth_response() && conn->auth == Auth::kChallenged) {
        refusal = auth_->Verify(conn->challenge, msg.auth_response(), &conn->session_id);
        if (!refusal) {
          conn->auth = Auth::kAuthenticated;
          TP_LOG(INFO) << "worker " << conn->peer() << " proved the cluster token (rank " << conn->hello.rank()
                       << ")";
          RegisterLocked(conn, conn->hello);
          return;
        }
      } else {
        refusal = Refusal{"unexpected_message", msg.has_hello() ? "Hello sent twice on one stream"
                                                                : "AuthResponse without a challenge"};
      }
      conn->auth = Auth::kRefused;
    } else if (conn->auth != Auth::kAuthenticated) {
      conn->auth = Auth::kRefused;
      refusal = Refusal{"unexpected_message", "message before the worker authenticated"};
    }
    if (refusal) {
      ReportRefusal(conn->peer(), *refusal);
      conn->Refuse(refusal->message);
      return;
    }
    int rank = conn->rank;
    if (rank < 0 || slots_[rank].conn != conn) return;  // not registered (or replaced)
    Slot& slot = slots_[rank];
    slot.status.last_seen = absl::Now();
    if (msg.has_load_result()) {
      const auto& r = msg.load_result();
      if (!r.ok()) {
        load_error_ = absl::FailedPreconditionError(absl::StrCat("worker rank ", rank, " failed to load: ", r.error()));
        TP_LOG(ERROR) << load_error_.message();
        group_loading_ = false;
        return;
      }
      slot.status.loaded = true;
      slot.status.weight_bytes = r.weight_bytes();
      slot.max_kv_blocks = r.max_kv_blocks();
      slot.kv_bytes_per_block = r.kv_bytes_per_block();
      TP_LOG(INFO) << "worker rank " << rank << " loaded " << r.weight_bytes() << " weight bytes on "
                   << r.device_name() << " in " << r.load_seconds() << " s";
      MaybeAllocateKvLocked();
    } else if (msg.has_kv_ready()) {
      if (!msg.kv_ready().ok()) {
        load_error_ = absl::ResourceExhaustedError(
            absl::StrCat("worker rank ", rank, " could not allocate its KV cache: ", msg.kv_ready().error()));
        TP_LOG(ERROR) << load_error_.message();
        return;
      }
      slot.kv_ready = true;
      bool all = std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.kv_ready; });
      if (all) {
        kv_allocating_ = false;
        group_loading_ = false;
        ready_ = true;
        load_error_ = absl::OkStatus();
        TP_LOG(INFO) << "tensor-parallel group of " << options_.world_size << " ready (generation "
                     << generation_ << ")";
      }
    } else if (msg.has_step_result()) {
      const auto& r = msg.step_result();
      if (step_in_flight_ && r.step_id() == step_id_) {
        slot.has_result = true;
        slot.result = r;
        slot.status.last_step_seconds = r.step_seconds();
        slot.status.last_allreduce_seconds = r.allreduce_seconds();
      }
    }
    // Pong: last_seen already updated.
  }
  NotifyReadiness();
}

void WorkerPool::OnDisconnect(WorkerConnection* conn) {
  {
    absl::MutexLock lock(&mu_);
    if (auth_ != nullptr) auth_->CloseSession(conn->session_id);  // its store MACs stop working with it
    if (conn->auth == WorkerConnection::Auth::kChallenged) {
      // Our tpserve worker hangs up here when the coordinator's proof fails, i.e. its token differs.
      ReportRefusal(conn->peer(), Refusal{"unanswered_challenge",
                                          "closed the stream without answering the cluster-token challenge"});
    }
    int rank = conn->rank;
    if (rank < 0 || rank >= static_cast<int>(slots_.size()) || slots_[rank].conn != conn) return;
    Slot& slot = slots_[rank];
    slot.conn = nullptr;
    slot.status.connected = false;
    slot.status.loaded = false;
    slot.kv_ready = false;
    slot.load_sent = false;
    if (!shutdown_) {
      TP_LOG(WARNING) << "worker rank " << rank << " disconnected; the group is not ready until it returns";
    }
    ready_ = false;
    group_loading_ = false;
    kv_allocating_ = false;
    // Survivors must rebuild their communicator with the returning rank: they get a new LoadCommand
    // (same model, new rendezvous generation) when the group is whole again.
    for (auto& s : slots_) {
      s.load_sent = false;
      s.kv_ready = false;
      s.status.loaded = false;
    }
  }
  NotifyReadiness();
}

void WorkerPool::MaybeStartLoadLocked() {
  if (shutdown_ || group_loading_) return;
  for (const auto& s : slots_) {
    if (s.conn == nullptr) return;
  }
  ++generation_;
  group_loading_ = true;
  ready_ = false;
  std::string prefix = absl::StrCat("g", generation_, "/");
  TP_LOG(INFO) << "all " << options_.world_size << " workers connected; loading " << options_.model_path
               << " (generation " << generation_ << ")";
  for (auto& s : slots_) {
    wv1::CoordinatorMessage m;
    auto* load = m.mutable_load();
    load->set_model_path(options_.model_path);
    load->set_rank(s.status.rank);
    load->set_world_size(options_.world_size);
    load->set_dtype(options_.dtype);
    load->set_quantization(options_.quantization);
    load->set_quantize_lm_head(options_.quantize_lm_head);
    load->set_kv_cache_bytes(options_.kv_cache_bytes);
    load->set_kv_memory_fraction(options_.kv_memory_fraction);
    load->set_block_size(options_.block_size);
    load->set_max_num_seqs(options_.max_num_seqs);
    load->set_max_num_batched_tokens(options_.max_num_batched_tokens);
    load->set_comm_backend(options_.comm_backend);
    load->set_store_prefix(prefix);
    load->set_threads(options_.threads);
    load->set_step_timeout_ms(absl::ToInt64Milliseconds(options_.step_timeout));
    s.load_sent = true;
    s.conn->Send(m);
  }
}

void WorkerPool::MaybeAllocateKvLocked() {
  if (kv_allocating_) return;
  int64_t blocks = std::numeric_limits<int64_t>::max();
  int64_t bytes_per_block = 0;
  for (const auto& s : slots_) {
    if (s.conn == nullptr || !s.status.loaded) return;
    blocks = std::min(blocks, s.max_kv_blocks);
    bytes_per_block = std::max(bytes_per_block, s.kv_bytes_per_block);
  }
  if (options_.max_kv_blocks > 0) blocks = std::min<int64_t>(blocks, options_.max_kv_blocks);
  blocks = std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max());
  if (blocks <= 0) {
    load_error_ = absl::ResourceExhaustedError(
        "no KV cache blocks fit in the KV memory budget: raise --kv-cache-memory (or free device memory)");
    TP_LOG(ERROR) << load_error_.message();
    return;
  }
  kv_allocating_ = true;
  num_kv_blocks_ = static_cast<int>(blocks);
  kv_bytes_per_block_ = bytes_per_block;
  for (auto& s : slots_) {
    wv1::CoordinatorMessage m;
    m.mutable_allocate_kv()->set_num_blocks(num_kv_blocks_);
    s.conn->Send(m);
  }
}

bool WorkerPool::IsReadyLocked() const {
  if (!ready_ || shutdown_) return false;
  absl::Time now = absl::Now();
  for (const auto& s : slots_) {
    if (s.conn == nullptr || !s.kv_ready) return false;
    bool answering = step_in_flight_ && !s.has_result;
    if (!answering && now - s.status.last_seen > options_.heartbeat_timeout) return false;
  }
  return true;
}

bool WorkerPool::IsReady() const {
  absl::MutexLock lock(&mu_);
  return IsReadyLocked();
}

bool WorkerPool::WaitReady(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto cond = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return IsReadyLocked() || shutdown_ || !load_error_.ok(); };
  mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  return IsReadyLocked();
}

absl::Status WorkerPool::load_error() const {
  absl::MutexLock lock(&mu_);
  return load_error_;
}

int WorkerPool::num_kv_blocks() const {
  absl::MutexLock lock(&mu_);
  return num_kv_blocks_;
}

int64_t WorkerPool::kv_bytes_per_block() const {
  absl::MutexLock lock(&mu_);
  return kv_bytes_per_block_;
}

int WorkerPool::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

std::vector<WorkerStatus> WorkerPool::Status() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerStatus> out;
  for (const auto& s : slots_) out.push_back(s.status);
  return out;
}

void WorkerPool::SetReadinessListener(std::function<void(bool)> listener) {
  absl::MutexLock lock(&listener_mu_);
  readiness_listener_ = std::move(listener);
}

void WorkerPool::NotifyReadiness() {
  bool ready = IsReady();
  absl::MutexLock lock(&listener_mu_);
  if (ready == last_notified_ready_) return;
  last_notified_ready_ = ready;
  if (readiness_listener_) readiness_listener_(ready);
}

absl::StatusOr<StepOutcome> WorkerPool::RunStep(wv1::StepPlan plan, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (!IsReadyLocked()) {
    return absl::UnavailableError("the tensor-parallel worker group is not ready");
  }
  plan.set_step_id(++step_id_);
  step_in_flight_ = true;
  step_started_ = absl::Now();
  wv1::CoordinatorMessage m;
  *m.mutable_step() = std::move(plan);
  for (auto& s : slots_) {
    s.has_result = false;
    s.conn->Send(m);
  }
  const int gen = generation_;
  auto done = [this, gen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (shutdown_ || generation_ != gen || !ready_) return true;
    for (const auto& s : slots_) {
      if (s.conn == nullptr) return true;
      if (!s.has_result) return false;
    }
    return true;
  };
  bool finished = mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  step_in_flight_ = false;
  for (const auto& s : slots_) {
    if (s.conn == nullptr || generation_ != gen || !ready_ || shutdown_) {
      return absl::UnavailableError(absl::StrCat("lost worker rank ", s.status.rank, " during step ", step_id_));
    }
  }
  if (!finished) {
    ready_ = false;
    return absl::UnavailableError(absl::StrCat("step ", step_id_, " timed out after ",
                                               absl::FormatDuration(timeout), " waiting for workers"));
  }
  StepOutcome out;
  for (const auto& s : slots_) {
    if (!s.result.error().empty()) {
      return absl::InternalError(absl::StrCat("worker rank ", s.status.rank, ": ", s.result.error()));
    }
    out.step_seconds.push_back(s.result.step_seconds());
    out.allreduce_seconds.push_back(s.result.allreduce_seconds());
  }
  out.result = slots_[0].result;
  return out;
}

void WorkerPool::Shutdown(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  shutdown_ = true;
  ready_ = false;
  for (auto& s : slots_) {
    if (s.conn != nullptr) {
      wv1::CoordinatorMessage m;
      m.mutable_shutdown()->set_reason(reason);
      s.conn->Send(m);
    }
  }
}

void WorkerPool::HeartbeatLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.heartbeat_interval);
      if (shutdown_) return;
      if (!step_in_flight_) {
        wv1::CoordinatorMessage m;
        m.mutable_ping()->set_nonce(++ping_nonce_);
        for (auto& s : slots_) {
          if (s.conn != nullptr) s.conn->Send(m);
        }
      }
    }
    NotifyReadiness();  // a silent worker turns the group not-ready here
  }
}

}  // namespace tpserve::coordinator
