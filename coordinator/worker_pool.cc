// Implementation of coordinator/worker_pool.h.
#include "coordinator/worker_pool.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tpserve::coordinator {

namespace wv1 = tpserve::worker::v1;

WorkerPool::WorkerPool(const WorkerGroupOptions& options, std::shared_ptr<WorkerAuthenticator> auth)
    : options_(options),
      auth_(std::move(auth)),
      store_service_(auth_, [this](const std::string& peer, const Refusal& r) { ReportRefusal(peer, r); }),
      membership_(GroupMembershipOptions{options.world_size, options.max_kv_blocks, options.heartbeat_timeout}) {
  slots_.resize(options_.world_size);
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
  return store_service_.StoreSet(context, request, response);
}

grpc::ServerUnaryReactor* WorkerPool::StoreGet(grpc::CallbackServerContext* context,
                                               const wv1::StoreGetRequest* request,
                                               wv1::StoreGetResponse* response) {
  return store_service_.StoreGet(context, request, response);
}

void WorkerPool::RegisterLocked(WorkerConnection* conn, const wv1::Hello& h) {
  GroupMembership::Effects fx = membership_.Register(h.rank(), h.world_size(), h.protocol_version(), h.device(), h.hostname(),
                                                     absl::StrCat(conn->peer(), ", pid ", h.pid()), absl::Now());
  if (!fx.refuse.empty()) {
    wv1::CoordinatorMessage reply;
    reply.mutable_shutdown()->set_reason(fx.refuse);
    conn->Send(reply);
    return;
  }
  conn->rank = h.rank();
  slots_[h.rank()].conn = conn;
  ApplyLocked(fx);
}

void WorkerPool::ApplyLocked(const GroupMembership::Effects& fx) {
  if (fx.send_load) {
    const std::string prefix = absl::StrCat("g", membership_.generation(), "/");
    TP_LOG(INFO) << "all " << options_.world_size << " workers connected; loading " << options_.model_path
                 << " (generation " << membership_.generation() << ")";
    for (int rank = 0; rank < options_.world_size; ++rank) {
      wv1::CoordinatorMessage m;
      auto* load = m.mutable_load();
      load->set_model_path(options_.model_path);
      load->set_rank(rank);
      load->set_world_size(options_.world_size);
      load->set_dtype(options_.dtype);
      load->set_quantization(options_.quantization);
      load->set_quantize_lm_head(options_.quantize_lm_head);
      load->set_draft_model_path(options_.draft_model_path);
      load->set_kv_cache_bytes(options_.kv_cache_bytes);
      load->set_kv_memory_fraction(options_.kv_memory_fraction);
      load->set_block_size(options_.block_size);
      load->set_comm_backend(options_.comm_backend);
      load->set_store_prefix(prefix);
      load->set_threads(options_.threads);
      load->set_step_timeout_ms(absl::ToInt64Milliseconds(options_.step_timeout));
      load->set_generation(membership_.generation());
      slots_[rank].conn->Send(m);
    }
  }
  if (fx.allocate_kv_blocks > 0) {
    wv1::CoordinatorMessage m;
    m.mutable_allocate_kv()->set_num_blocks(fx.allocate_kv_blocks);
    m.mutable_allocate_kv()->set_generation(membership_.generation());
    for (auto& s : slots_) s.conn->Send(m);
  }
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
    membership_.Seen(rank, absl::Now());
    if (msg.has_load_result()) {
      const auto& r = msg.load_result();
      if (r.ok()) {
        TP_LOG(INFO) << "worker rank " << rank << " loaded " << r.weight_bytes() << " weight bytes on "
                     << r.device_name() << " in " << r.load_seconds() << " s";
      }
      ApplyLocked(membership_.Loaded(
          rank, r.generation(),
          {r.ok(), r.error(), r.weight_bytes(), r.max_kv_blocks(), r.kv_bytes_per_block()}, absl::Now()));
    } else if (msg.has_kv_ready()) {
      const auto& k = msg.kv_ready();
      membership_.KvReady(rank, k.generation(), k.ok(), k.error(), absl::Now());
    } else if (msg.has_step_result()) {
      const auto& r = msg.step_result();
      if (step_in_flight_ && r.step_id() == step_id_) {
        slots_[rank].has_result = true;
        slots_[rank].result = r;
        membership_.RecordStep(rank, r.step_seconds(), r.allreduce_seconds());
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
    slots_[rank].conn = nullptr;
    membership_.Disconnect(rank);
  }
  NotifyReadiness();
}

bool WorkerPool::IsReadyLocked() const {
  std::vector<bool> answering(slots_.size());
  for (size_t r = 0; r < slots_.size(); ++r) answering[r] = step_in_flight_ && !slots_[r].has_result;
  return membership_.IsReady(absl::Now(), answering);
}

bool WorkerPool::IsReady() const {
  absl::MutexLock lock(&mu_);
  return IsReadyLocked();
}

bool WorkerPool::WaitReady(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto cond = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return IsReadyLocked() || membership_.shut_down() || !membership_.load_error().ok();
  };
  mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  return IsReadyLocked();
}

absl::Status WorkerPool::load_error() const {
  absl::MutexLock lock(&mu_);
  return membership_.load_error();
}

int WorkerPool::num_kv_blocks() const {
  absl::MutexLock lock(&mu_);
  return membership_.num_kv_blocks();
}

int64_t WorkerPool::kv_bytes_per_block() const {
  absl::MutexLock lock(&mu_);
  return membership_.kv_bytes_per_block();
}

int WorkerPool::generation() const {
  absl::MutexLock lock(&mu_);
  return membership_.generation();
}

std::vector<WorkerStatus> WorkerPool::Status() const {
  absl::MutexLock lock(&mu_);
  return membership_.Status();
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
  wv1::CoordinatorMessage m;
  *m.mutable_step() = std::move(plan);
  for (auto& s : slots_) {
    s.has_result = false;
    s.conn->Send(m);
  }
  const int gen = membership_.generation();
  auto lost = [this, gen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return membership_.shut_down() || membership_.generation() != gen || !membership_.formed();
  };
  auto done = [this, &lost]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (lost()) return true;
    for (const auto& s : slots_) {
      if (s.conn == nullptr) return true;
      if (!s.has_result) return false;
    }
    return true;
  };
  bool finished = mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  step_in_flight_ = false;
  for (size_t r = 0; r < slots_.size(); ++r) {
    if (slots_[r].conn == nullptr || lost()) {
      return absl::UnavailableError(absl::StrCat("lost worker rank ", r, " during step ", step_id_));
    }
  }
  if (!finished) {
    ApplyLocked(membership_.StepTimedOut(absl::Now()));
    return absl::UnavailableError(absl::StrCat("step ", step_id_, " timed out after ",
                                               absl::FormatDuration(timeout), " waiting for workers"));
  }
  StepOutcome out;
  for (size_t r = 0; r < slots_.size(); ++r) {
    const Slot& s = slots_[r];
    if (!s.result.error().empty()) {
      return absl::InternalError(absl::StrCat("worker rank ", r, ": ", s.result.error()));
    }
    out.step_seconds.push_back(s.result.step_seconds());
    out.allreduce_seconds.push_back(s.result.allreduce_seconds());
  }
  out.result = slots_[0].result;
  return out;
}

void WorkerPool::Shutdown(const std::string& reason) {
  store_service_.Shutdown();  // answers waiting StoreGets before the worker port's server stops
  absl::MutexLock lock(&mu_);
  if (membership_.shut_down()) return;
  membership_.Shutdown();
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
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return membership_.shut_down(); };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.heartbeat_interval);
      if (membership_.shut_down()) return;
      ApplyLocked(membership_.Tick(absl::Now()));  // a failed re-formation whose retry is due
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
