// Implementation of worker/worker_service.h.
#include "worker/worker_service.h"

#include <unistd.h>

#include <chrono>
#include <deque>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/worker_protocol.h"
#include "common/cluster_auth.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "kernels/backend.h"
#include "common/sampling_limits.h"
#include "worker.grpc.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/communicator_reaper.h"
#include "worker/draft_runner.h"
#include "worker/grpc_store.h"
#include "worker/model/llama_model.h"
#include "worker/model/shard_spec.h"
#include "worker/phase_watchdog.h"
#include "worker/sampler/sampler.h"

namespace tpserve::worker {

namespace wv1 = tpserve::worker::v1;

namespace {

using Stream = grpc::ClientReaderWriter<wv1::WorkerMessage, wv1::CoordinatorMessage>;

// Messages the coordinator sent, in order, from the stream's reader thread to the session thread.
// Thread-safe.
class Inbox {
 public:
  void Push(wv1::CoordinatorMessage m) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(m));
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // Blocks for the next message; false once the stream has ended and every message was taken.
  bool Pop(wv1::CoordinatorMessage* out) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Inbox::ReadyLocked));
    if (queue_.empty()) return false;
    *out = std::move(queue_.front());
    queue_.pop_front();
    return true;
  }
  // True when the stream ended within `timeout`.
  bool WaitClosed(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&closed_), timeout);
  }

 private:
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); }
  absl::Mutex mu_;
  std::deque<wv1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

// Parses "cpu" or "cuda:K".
absl::StatusOr<int> CudaOrdinal(const std::string& device) {
  if (device == "cpu") return -1;
  if (absl::StartsWith(device, "cuda")) {
    if (device == "cuda") return 0;
    int k;
    if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &k) && k >= 0) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat("--device '", device, "': expected cpu or cuda:K"));
}

absl::StatusOr<kernels::CpuIsa> ParseIsa(const std::string& s) {
  kernels::CpuIsa isa;
  if (kernels::ParseCpuIsa(s, &isa)) return isa;
  return absl::InvalidArgumentError(
      absl::StrCat("--cpu-isa '", s, "': expected auto, amx, avx512, avx2 or scalar"));
}

// Everything a worker keeps across control-stream reconnects.
// Threads: the session thread runs every message in order (Load, AllocateKv, Step, ...); the stream's reader
// thread may call AbortCollectives() while a step is in flight; the watchdog reads InFlightCollective().
class Worker {
 public:
  explicit Worker(const WorkerOptions& options)
      : options_(options), watchdog_(WatchdogOptions(options.watchdog_period, this)) {}

  // One Connect stream; returns when it ends. Sets *shutdown when told to exit.
  absl::Status Session(const std::shared_ptr<wv1::WorkerControl::Stub>& stub, bool* registered, bool* shutdown);

 private:
  static PhaseWatchdog::Options WatchdogOptions(absl::Duration period, Worker* worker) {
    PhaseWatchdog::Options o;
    o.period = period;
    o.detail = [worker] { return worker->InFlightCollective(); };
    return o;
  }
  // Thread-safe. Ends a collective the session thread is blocked in (a hung or dead peer), and fails every
  // later one: called when a message arrives that supersedes the current group generation (a LoadCommand,
  // Shutdown) or when the control stream ends. Before, a survivor could sit in a collective for Gloo's
  // 120 s while the next generation's LoadCommand waited behind it in the inbox.
  void AbortCollectives(const std::string& why);
  std::string InFlightCollective() const;  // thread-safe; "" when none
  // Hands the communicator to the reaper (session thread). The model must not run until Load sets a new one.
  void RetireCommunicator(int generation);

  absl::Status Load(const wv1::LoadCommand& cmd, GrpcStore& store, wv1::LoadResult* result);
  absl::Status AllocateKv(int num_blocks);
  void Step(const wv1::StepPlan& plan, wv1::StepResult* result);
  void DumpLogits(uint64_t step_id, uint64_t seq_id, const float* logits, int64_t vocab);
  // Rank 0 with a draft model: the proposals the plan asked for (SeqStep.num_proposals), from the
  // sampler's histories after this step's tokens.
  void Propose(const wv1::StepPlan& plan, wv1::StepResult* result);

  const WorkerOptions options_;
  std::string loaded_key_;  // model path + rank + world + dtype of what is loaded
  ModelConfig config_;
  std::unique_ptr<kernels::Backend> backend_;
  CommunicatorReaper reaper_;  // before comm_: the communicators it holds go after comm_ at exit
  // Written by the session thread under comm_mu_ (which reads it without); other threads read it under comm_mu_.
  mutable absl::Mutex comm_mu_;
  std::unique_ptr<comm::Communicator> comm_;
  int comm_generation_ = 0;  // the generation comm_ was formed for; like comm_ (written under comm_mu_)
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<sampler::Sampler> sampler_;
  std::string draft_key_;                // draft model path + device of what draft_ holds
  std::unique_ptr<DraftRunner> draft_;   // rank 0 with --draft-model only
  int block_size_ = 16;
  int64_t kv_budget_bytes_ = 0;
  float kv_fraction_ = 0.9f;
  PhaseWatchdog watchdog_;  // last: its thread reads comm_ through InFlightCollective()
};

void Worker::AbortCollectives(const std::string& why) {
  absl::MutexLock lock(&comm_mu_);
  if (comm_ == nullptr) return;
  const std::string in_flight = comm_->InFlight();
  if (!in_flight.empty()) {
    TP_LOG(WARNING) << "aborting the generation " << comm_generation_ << " communicator (" << why
                    << ") while the control loop is in " << watchdog_.phase() << "; " << in_flight;
  }
  comm_->Abort(absl::StrCat(why, "; the generation ", comm_generation_, " communicator was aborted"));
}

std::string Worker::InFlightCollective() const {
  absl::MutexLock lock(&comm_mu_);
  if (comm_ == nullptr) return "";
  const std::string in_flight = comm_->InFlight();
  return in_flight.empty() ? "" : absl::StrCat("collective in flight: ", in_flight);
}

void Worker::RetireCommunicator(int generation) {
  std::unique_ptr<comm::Communicator> old;
  {
    absl::MutexLock lock(&comm_mu_);
    old = std::move(comm_);
  }
  if (model_ != nullptr) model_->SetCommunicator(nullptr);
  if (old == nullptr) return;
  // Already aborted when the LoadCommand arrived; again in case it came another way (harmless twice).
  old->Abort(absl::StrCat("replaced by generation ", generation));
  reaper_.Retire(std::move(old), absl::StrCat("generation ", comm_generation_, "'s"));
}

absl::Status Worker::Load(const wv1::LoadCommand& cmd, GrpcStore& store, wv1::LoadResult* result) {
  const absl::Time start = absl::Now();
  if (cmd.rank() != options_.rank || cmd.world_size() != options_.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("coordinator asked rank ", cmd.rank(), "/", cmd.world_size(),
                                                   " but this worker is rank ", options_.rank, "/",
                                                   options_.world_size));
  }
  block_size_ = cmd.block_size() > 0 ? cmd.block_size() : 16;
  kv_budget_bytes_ = cmd.kv_cache_bytes();
  kv_fraction_ = cmd.kv_memory_fraction() > 0 ? cmd.kv_memory_fraction() : 0.9f;
  TP_ASSIGN_OR_RETURN(int cuda, CudaOrdinal(options_.device));
  const std::string key = absl::StrCat(cmd.model_path(), "|", cmd.rank(), "|", cmd.world_size(), "|", cmd.dtype(),
                                       "|", cmd.quantization(), cmd.quantize_lm_head() ? "+lm_head" : "",
                                       "|", options_.device);

  // A survivor of a lost peer keeps its weights and only rebuilds its communicator. The old one is torn down
  // off this thread (CommunicatorReaper says why).
  const int generation = cmd.generation();
  watchdog_.Enter(absl::StrCat("load generation ", generation, ": retiring the old communicator"));
  RetireCommunicator(generation);
  if (model_ != nullptr && key != loaded_key_) {
    draft_.reset();  // it lives on the backend too
    model_.reset();
    reaper_.Drain();  // a retired NCCL communicator may still use the backend's stream
    backend_.reset();
  }
  if (backend_ == nullptr) {
    watchdog_.Enter(absl::StrCat("load generation ", generation, ": creating the backend"));
    if (cuda >= 0) {
      TP_ASSIGN_OR_RETURN(backend_, kernels::CreateCudaBackend(cuda));
    } else {
      kernels::CpuBackendOptions o;
      o.threads = options_.threads > 0 ? options_.threads : cmd.threads();
      TP_ASSIGN_OR_RETURN(o.isa, ParseIsa(options_.cpu_isa));
      TP_ASSIGN_OR_RETURN(backend_, kernels::CreateCpuBackend(o));
    }
  }

  // Collectives first: a bad peer shows at startup, and the model holds the communicator.
  std::string backend_name = cmd.comm_backend();
  if (backend_name.empty() || backend_name == "auto") backend_name = cuda >= 0 ? "nccl" : "gloo";
  watchdog_.Enter(absl::StrCat("load generation ", generation, ": ", backend_name, " rendezvous (store prefix '",
                               cmd.store_prefix(), "')"));
  // Every collective waits at most the coordinator's --step-timeout on its peers.
  const absl::Duration op_timeout =
      cmd.step_timeout_ms() > 0 ? absl::Milliseconds(cmd.step_timeout_ms()) : comm::GlooOptions().op_timeout;
  std::unique_ptr<comm::Communicator> comm;
  if (options_.world_size == 1) {
    comm = comm::CreateLocalCommunicator();
  } else if (backend_name == "nccl") {
    comm::NcclOptions o;
    o.rank = options_.rank;
    o.world_size = options_.world_size;
    o.device = cuda < 0 ? 0 : cuda;
    o.prefix = cmd.store_prefix();
    o.stream = backend_->native_stream();
    o.op_timeout = op_timeout;
    TP_ASSIGN_OR_RETURN(comm, comm::CreateNcclCommunicator(o, store));
  } else if (backend_name == "gloo") {
    comm::GlooOptions o;
    o.rank = options_.rank;
    o.world_size = options_.world_size;
    o.host = options_.comm_host;
    o.prefix = cmd.store_prefix();
    o.op_timeout = op_timeout;
    TP_ASSIGN_OR_RETURN(comm, comm::CreateGlooCommunicator(o, store));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--comm-backend '", backend_name, "': expected gloo or nccl"));
  }
  {
    absl::MutexLock lock(&comm_mu_);
    comm_ = std::move(comm);
    comm_generation_ = generation;
  }

  if (model_ == nullptr) {
    watchdog_.Enter(absl::StrCat("load generation ", generation, ": loading the weights of ", cmd.model_path()));
    TP_ASSIGN_OR_RETURN(config_, LoadModelConfig(cmd.model_path()));
    TP_ASSIGN_OR_RETURN(auto spec, model::ShardSpec::Create(config_, options_.rank, options_.world_size));
    TP_ASSIGN_OR_RETURN(auto ckpt, checkpoint::Checkpoint::Open(cmd.model_path()));
    model::LlamaModelOptions mo;
    if (cmd.dtype() != "auto" && !cmd.dtype().empty()) {
      TP_ASSIGN_OR_RETURN(DType dt, ParseDType(cmd.dtype()));
      mo.weight_dtype = dt;
    }
    TP_ASSIGN_OR_RETURN(mo.quantization, model::ParseWeightQuantization(cmd.quantization()));
    mo.quantize_lm_head = cmd.quantize_lm_head();
    TP_ASSIGN_OR_RETURN(model_, model::LlamaModel::Load(*ckpt, spec, backend_.get(), comm_.get(), mo));
    loaded_key_ = key;
    // The checkpoint mapping is dropped here: resident weights are this rank's slices only.
  } else {
    model_->SetCommunicator(comm_.get());
  }
  sampler_ = std::make_unique<sampler::Sampler>(config_.vocab_size);

  // The draft model lives on rank 0 only (worker/draft_runner.h says why).
  const std::string draft_path = options_.rank == 0 ? cmd.draft_model_path() : "";
  const std::string draft_key = absl::StrCat(draft_path, "|", cmd.dtype(), "|", options_.device);
  if (draft_path.empty()) {
    draft_.reset();
  } else if (draft_ == nullptr || draft_key != draft_key_) {
    watchdog_.Enter(absl::StrCat("load generation ", generation, ": loading the draft model ", draft_path));
    draft_.reset();
    model::LlamaModelOptions mo;
    if (cmd.dtype() != "auto" && !cmd.dtype().empty()) {
      TP_ASSIGN_OR_RETURN(DType dt, ParseDType(cmd.dtype()));
      mo.weight_dtype = dt;
    }
    TP_ASSIGN_OR_RETURN(draft_, DraftRunner::Load(draft_path, config_, backend_.get(), mo));
    draft_key_ = draft_key;
  }

  const int64_t block_bytes = static_cast<int64_t>(model_->KvBlockBytes(block_size_));
  // The draft's pool has as many blocks as the target's: the budget pays for both.
  const int64_t draft_block_bytes = draft_ ? static_cast<int64_t>(draft_->KvBlockBytes(block_size_)) : 0;
  int64_t budget = kv_budget_bytes_;
  if (budget <= 0) budget = static_cast<int64_t>(kv_fraction_ * static_cast<double>(backend_->FreeMemoryBytes()));
  if (budget <= 0) budget = int64_t{1} << 30;  // host backends without a budget: 1 GiB
  result->set_ok(true);
  result->set_weight_bytes(model_->weight_bytes() + (draft_ ? draft_->weight_bytes() : 0));
  result->set_kv_bytes_per_block(block_bytes);
  result->set_max_kv_blocks(block_bytes > 0 ? budget / (block_bytes + draft_block_bytes) : 0);
  result->set_device_name(backend_->name());
  result->set_load_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  TP_LOG(INFO) << "rank " << options_.rank << "/" << options_.world_size << " ready on " << backend_->name() << " ("
               << comm_->name() << "): " << model_->weight_bytes() << " weight bytes, KV block " << block_bytes
               << " bytes";
  return absl::OkStatus();
}

absl::Status Worker::AllocateKv(int num_blocks) {
  if (model_ == nullptr) return absl::FailedPreconditionError("AllocateKv before Load");
  TP_RETURN_IF_ERROR(model_->AllocateKv(num_blocks, block_size_));
  if (draft_ != nullptr) TP_RETURN_IF_ERROR(draft_->AllocateKv(num_blocks, block_size_));
  return absl::OkStatus();
}

void Worker::DumpLogits(uint64_t step_id, uint64_t seq_id, const float* logits, int64_t vocab) {
  std::string path = absl::StrCat(options_.dump_dir, "/logits_step", step_id, "_seq", seq_id, ".f32");
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(logits), vocab * static_cast<int64_t>(sizeof(float)));
}

void Worker::Step(const wv1::StepPlan& plan, wv1::StepResult* result) {
  const absl::Time start = absl::Now();
  result->set_step_id(plan.step_id());
  if (model_ == nullptr || comm_ == nullptr) {
    result->set_error(model_ == nullptr ? "step before load"
                                        : "step before this rank's communicator was formed (its last load failed)");
    return;
  }
  for (uint64_t id : plan.finished()) {
    sampler_->Finish(id);
    if (draft_ != nullptr) draft_->Forget(id);
  }
  const bool samples = options_.rank == 0;
  if (samples) {
    for (const auto& st : plan.starts()) {
      // A (re)started sequence gives its draft blocks back while it waits; Propose rebuilds them.
      if (draft_ != nullptr) draft_->Forget(st.seq_id());
      absl::Status s = sampler_->Start(st);
      if (!s.ok()) {
        result->set_error(std::string(s.message()));
        return;
      }
    }
  }
  model::StepInput in;
  in.seqs.reserve(plan.seqs_size());
  for (const auto& s : plan.seqs()) {
    model::SeqInput q;
    q.token_ids.assign(s.token_ids().begin(), s.token_ids().end());
    q.start_position = s.start_position();
    q.block_table.assign(s.block_table().begin(), s.block_table().end());
    q.sample = s.sample();
    if (s.num_draft_tokens() < 0 || s.num_draft_tokens() >= s.token_ids_size() ||
        (s.num_draft_tokens() > 0 && !s.sample())) {
      result->set_error(absl::StrCat("seq ", s.seq_id(), ": num_draft_tokens ", s.num_draft_tokens(),
                                     " needs sample and must be below the ", s.token_ids_size(), " tokens"));
      return;
    }
    q.num_logits = 1 + s.num_draft_tokens();
    if (s.num_proposals() < 0 || s.num_proposals() > kMaxSpeculativeTokens ||
        (s.num_proposals() > 0 && !s.sample())) {
      result->set_error(absl::StrCat("seq ", s.seq_id(), ": num_proposals ", s.num_proposals(),
                                     " must be in [0, ", kMaxSpeculativeTokens, "] and needs sample"));
      return;
    }
    in.seqs.push_back(std::move(q));
  }
  // On a GPU, a step whose sampled sequences are all plain greedy brings back only their top candidates
  // (argmax and requested logprobs, computed on the device) instead of whole logits rows. Host backends and
  // logits dumps keep the whole rows (the host sampler's float64 logprobs stay the reference there).
  if (samples && !backend_->is_host() && options_.dump_dir.empty()) {
    int top_k = 0;
    for (const auto& s : plan.seqs()) {
      if (!s.sample()) continue;
      const int need = sampler_->TopCandidatesNeeded(s.seq_id());
      if (need == 0) {
        top_k = 0;
        break;
      }
      top_k = std::max(top_k, need);
    }
    in.top_k = top_k;
  }
  auto out = model_->Forward(in);
  if (!out.ok()) {
    TP_LOG(WARNING) << "step " << plan.step_id() << " failed after "
                    << absl::FormatDuration(absl::Now() - start) << ": " << out.status();
    result->set_error(std::string(out.status().message()));
    return;
  }
  result->set_allreduce_seconds(out->allreduce_seconds);
  if (samples) {
    const int64_t vocab = out->vocab_size;
    int row = 0;
    for (const auto& s : plan.seqs()) {
      if (!s.sample()) continue;
      // Verification (num_draft_tokens = d > 0): rows are the positions of the last d + 1 tokens. Sampling
      // them in order, exactly as d + 1 single steps would (same history, same RNG counter per token), and
      // stopping at the first token that differs from the next proposal keeps exactly the tokens a
      // non-speculative run samples, greedy or seeded. For a deterministic proposer this is the standard
      // rejection rule: proposal x is kept with probability p(x), else a token comes from p without x.
      const int d = s.num_draft_tokens();
      const int first_row = row;
      row += d + 1;
      for (int i = 0; i <= d; ++i) {
        const int at_row = first_row + i;
        absl::StatusOr<sampler::SampleResult> r;
        if (out->top_k > 0) {
          const size_t at = static_cast<size_t>(at_row) * out->top_k;
          r = sampler_->SampleTop(s.seq_id(), absl::MakeConstSpan(out->top_ids.data() + at, out->top_k),
                                  absl::MakeConstSpan(out->top_logits.data() + at, out->top_k), out->lse[at_row]);
        } else {
          const float* logits = out->logits.data() + static_cast<int64_t>(at_row) * vocab;
          if (!options_.dump_dir.empty() && i == 0) DumpLogits(plan.step_id(), s.seq_id(), logits, vocab);
          r = sampler_->Sample(s.seq_id(), absl::MakeConstSpan(logits, vocab));
        }
        if (!r.ok()) {
          result->set_error(absl::StrCat("sampling seq ", s.seq_id(), ": ", r.status().message()));
          return;
        }
        auto* t = result->add_tokens();
        t->set_seq_id(s.seq_id());
        t->set_token_id(r->token);
        t->set_logprob(r->logprob);
        t->mutable_top_ids()->Assign(r->top_ids.begin(), r->top_ids.end());
        t->mutable_top_logprobs()->Assign(r->top_logprobs.begin(), r->top_logprobs.end());
        if (i < d && r->token != s.token_ids(s.token_ids_size() - d + i)) break;
      }
    }
    if (draft_ != nullptr) Propose(plan, result);
  }
  result->set_step_seconds(absl::ToDoubleSeconds(absl::Now() - start));
}

void Worker::Propose(const wv1::StepPlan& plan, wv1::StepResult* result) {
  std::vector<DraftRunner::Request> requests;
  for (const auto& s : plan.seqs()) {
    if (s.num_proposals() <= 0) continue;
    const absl::Span<const int32_t> history = sampler_->TokenHistory(s.seq_id());
    if (history.empty()) continue;
    requests.push_back({s.seq_id(), history, s.num_proposals()});
  }
  if (requests.empty()) return;
  auto proposals = draft_->Propose(requests);
  if (!proposals.ok()) {
    // Proposals only save steps: the step's tokens stand, its sequences go on without proposals.
    TP_LOG(WARNING) << "step " << plan.step_id() << ": " << proposals.status();
    return;
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    if ((*proposals)[i].empty()) continue;
    auto* p = result->add_proposals();
    p->set_seq_id(requests[i].seq_id);
    p->set_num_tokens(static_cast<int>(requests[i].history.size()));
    p->mutable_token_ids()->Assign((*proposals)[i].begin(), (*proposals)[i].end());
  }
}

absl::Status Worker::Session(const std::shared_ptr<wv1::WorkerControl::Stub>& stub, bool* registered,
                             bool* shutdown) {
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub->Connect(&ctx);
  GrpcStore store(stub);
  wv1::WorkerMessage hello;
  auto* h = hello.mutable_hello();
  h->set_protocol_version(kWorkerProtocolVersion);
  h->set_rank(options_.rank);
  h->set_world_size(options_.world_size);
  h->set_device(options_.device);
  h->set_hostname(Hostname());
  h->set_pid(getpid());
  const std::string worker_nonce = options_.cluster_token.empty() ? "" : cluster_auth::RandomNonce();
  h->set_auth_nonce(worker_nonce);
  if (!stream->Write(hello)) {
    grpc::Status s = stream->Finish();
    // A coordinator that refuses this worker's certificate ends the call at once, before Hello is written.
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      return absl::UnauthenticatedError(absl::StrCat("the coordinator refused this worker: ", s.error_message()));
    }
    return absl::UnavailableError("coordinator not reachable");
  }
  // A reader thread keeps a Read pending on the stream at all times. With the synchronous API the transport
  // only makes progress (answers the channel's keepalive pings, notices a dead peer) while some thread waits
  // on the call, and one message can run for minutes: a 13B prefill chunk on CPU, or loading 26 GB of
  // weights. Reading only between messages let the 5 s keepalive watchdog drop the worker mid-step. The
  // session thread runs the messages in order and writes the replies (gRPC allows one reader and one writer
  // on a stream at once).
  // A LoadCommand or Shutdown supersedes the current generation: the reader aborts its collectives (and a Load
  // the rendezvous of an older one) at once, so a step blocked on a hung or dead peer, or a rendezvous with a
  // peer that died again, returns and the session thread reaches the message. The end of
  // the stream does the same (the coordinator is gone; a restarted one sends a LoadCommand anyway).
  Inbox inbox;
  std::thread reader([&] {
    wv1::CoordinatorMessage m;
    while (stream->Read(&m)) {
      if (m.has_load()) {
        AbortCollectives(absl::StrCat("the generation ", m.load().generation(), " LoadCommand arrived"));
        store.Supersede(m.load().store_prefix());  // an older generation's rendezvous gives up too
      } else if (m.has_shutdown()) {
        AbortCollectives("the coordinator said shut down");
      }
      inbox.Push(std::move(m));
    }
    AbortCollectives("the control stream to the coordinator ended");
    inbox.Close();
  });
  // Ends the call: waits for the reader (cancelling the call if the coordinator does not close it within
  // `grace`), then collects the status.
  auto end_call = [&](absl::Duration grace) {
    if (!inbox.WaitClosed(grace)) ctx.TryCancel();
    reader.join();
    return stream->Finish();
  };
  wv1::CoordinatorMessage msg;
  bool authenticated = options_.cluster_token.empty();
  // Ends the session on an authentication failure: nothing more is read or answered.
  auto refuse = [&](const std::string& why) {
    ctx.TryCancel();
    end_call(absl::ZeroDuration());
    return absl::UnauthenticatedError(why);
  };
  while (true) {
    watchdog_.Idle();
    if (!inbox.Pop(&msg)) break;
    wv1::WorkerMessage reply;
    if (msg.has_auth_challenge()) {
      const auto& c = msg.auth_challenge();
      if (options_.cluster_token.empty()) {
        return refuse("the coordinator requires a cluster token: start this worker with --cluster-token-file");
      }
      if (authenticated || c.nonce().size() != cluster_auth::kNonceBytes ||
          !cluster_auth::Equal(c.coordinator_proof(),
                               cluster_auth::Proof(options_.cluster_token, cluster_auth::Role::kCoordinator,
                                                   c.nonce(), worker_nonce, options_.rank, options_.world_size))) {
        return refuse("the coordinator could not prove it holds the cluster token (--cluster-token-file differs, or "
                      "this is not the cluster's coordinator); not answering it");
      }
      reply.mutable_auth_response()->set_proof(cluster_auth::Proof(options_.cluster_token, cluster_auth::Role::kWorker,
                                                                   c.nonce(), worker_nonce, options_.rank,
                                                                   options_.world_size));
      store.SetSession(cluster_auth::ToHex(c.nonce()),
                       cluster_auth::StoreSessionKey(options_.cluster_token, c.nonce(), worker_nonce));
      authenticated = true;
      if (!stream->Write(reply)) break;
      continue;
    }
    if (!authenticated) {
      return refuse("the coordinator did not authenticate with the cluster token (it runs without "
                    "--cluster-token-file, or it is not the cluster's coordinator); not serving it");
    }
    *registered = true;
    switch (msg.msg_case()) {
      case wv1::CoordinatorMessage::kLoad: {
        TP_LOG(INFO) << "generation " << msg.load().generation() << " LoadCommand received (store prefix '"
                     << msg.load().store_prefix() << "')";
        auto* r = reply.mutable_load_result();
        absl::Status s = Load(msg.load(), store, r);
        r->set_generation(msg.load().generation());
        if (!s.ok()) {
          TP_LOG(ERROR) << "load failed: " << s;
          r->set_ok(false);
          r->set_error(std::string(s.message()));
        }
        break;
      }
      case wv1::CoordinatorMessage::kAllocateKv: {
        watchdog_.Enter(absl::StrCat("allocating ", msg.allocate_kv().num_blocks(), " KV blocks (generation ",
                                     msg.allocate_kv().generation(), ")"));
        absl::Status s = AllocateKv(msg.allocate_kv().num_blocks());
        reply.mutable_kv_ready()->set_ok(s.ok());
        reply.mutable_kv_ready()->set_generation(msg.allocate_kv().generation());
        if (!s.ok()) reply.mutable_kv_ready()->set_error(std::string(s.message()));
        break;
      }
      case wv1::CoordinatorMessage::kStep:
        watchdog_.Enter(absl::StrCat("step ", msg.step().step_id(), " (generation ", comm_generation_, ")"));
        Step(msg.step(), reply.mutable_step_result());
        break;
      case wv1::CoordinatorMessage::kPing:
        reply.mutable_pong()->set_nonce(msg.ping().nonce());
        break;
      case wv1::CoordinatorMessage::kShutdown:
        TP_LOG(INFO) << "coordinator says shut down: " << msg.shutdown().reason();
        *shutdown = true;
        stream->WritesDone();
        end_call(absl::Seconds(5));
        return absl::OkStatus();
      default:
        continue;
    }
    watchdog_.Enter("writing the reply to the coordinator");
    if (!stream->Write(reply)) break;
  }
  watchdog_.Idle();
  grpc::Status s = end_call(absl::ZeroDuration());
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    return absl::UnauthenticatedError(absl::StrCat("the coordinator refused this worker: ", s.error_message()));
  }
  return absl::UnavailableError(absl::StrCat("control stream ended: ", s.error_message()));
}

}  // namespace

absl::Status RunWorker(const WorkerOptions& options, std::atomic<bool>* stop) {
  SetLogTag(absl::StrCat("worker[", options.rank, "]"));
  if (options.rank < 0 || options.world_size < 1 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("--rank ", options.rank, " must be in [0, --world-size ",
                                                   options.world_size, ")"));
  }
  if (auto d = CudaOrdinal(options.device); !d.ok()) return d.status();
  Worker worker(options);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // Keep pinging while a long step or load sends no data (gRPC's default stops after 2 such pings, which
  // leaves a dead coordinator unnoticed until the step ends); the coordinator accepts a ping per 5 s.
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  auto creds = MakeChannelCredentials(options.cluster_tls);
  if (!creds.ok()) return creds.status();
  if (!options.cluster_server_name.empty()) args.SetSslTargetNameOverride(options.cluster_server_name);
  auto channel = grpc::CreateCustomChannel(options.coordinator, *creds, args);
  auto stub = std::shared_ptr<wv1::WorkerControl::Stub>(wv1::WorkerControl::NewStub(channel));
  absl::Time unregistered_since = absl::Now();
  bool announced = false;
  while (!stop->load()) {
    if (!announced) {
      TP_LOG(INFO) << "registering with coordinator " << options.coordinator << " as rank " << options.rank << "/"
                   << options.world_size;
      announced = true;
    }
    // Wait for the channel so a coordinator that is still starting is not an error.
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::milliseconds(500))) {
      if (absl::Now() - unregistered_since > options.connect_timeout) {
        return absl::UnavailableError(absl::StrCat("could not reach the coordinator at ", options.coordinator,
                                                   " for ", absl::FormatDuration(options.connect_timeout)));
      }
      continue;
    }
    bool registered = false;
    bool shutdown = false;
    absl::Status s = worker.Session(stub, &registered, &shutdown);
    if (shutdown) return absl::OkStatus();
    if (absl::IsUnauthenticated(s)) return s;
    if (registered) {
      TP_LOG(WARNING) << s.message() << "; registering again";
      unregistered_since = absl::Now();
      announced = false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::OkStatus();
}

}  // namespace tpserve::worker
