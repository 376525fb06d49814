// Implementation of coordinator/engine.h.
#include "coordinator/engine.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "coordinator/status_details.h"

namespace tpserve::coordinator {

namespace v1 = tpserve::v1;
namespace wv1 = tpserve::worker::v1;

Engine::Engine(const EngineOptions& options, StepExecutor* executor, const Tokenizer* tokenizer, Metrics* metrics)
    : options_(options),
      executor_(executor),
      tokenizer_(tokenizer),
      metrics_(metrics),
      scheduler_(std::make_unique<Scheduler>(options.scheduler)) {
  free_blocks_ = options_.scheduler.num_blocks;
}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  generation_seen_ = executor_->generation();
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&inbox_mu_);
    if (stop_) {
      // already stopping
    }
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::StopAccepting() { accepting_ = false; }

absl::StatusOr<uint64_t> Engine::Submit(RequestSpec spec, std::shared_ptr<RequestSink> sink) {
  if (!accepting_) {
    return WithReason(
        absl::UnavailableError("server is draining (shutting down) and accepts no new requests; retry on another replica"),
        reason::kDraining);
  }
  // Takes a queue slot only while one is free, so concurrent submissions never overshoot the limit.
  int queued = queued_.load();
  do {
    if (queued >= options_.max_queued_requests) {
      return WithReason(absl::ResourceExhaustedError(absl::StrCat("request queue is full (",
                                                                  options_.max_queued_requests,
                                                                  " waiting, --max-queued-requests); retry later")),
                        reason::kQueueFull);
    }
  } while (!queued_.compare_exchange_weak(queued, queued + 1));
  uint64_t id = next_id_++;
  if (spec.request_id.empty()) spec.request_id = absl::StrCat("req-", id);
  if (options_.log_prompts && !spec.internal) {
    // --log-prompts only: prompts are user data. The decoded prompt ids (after the chat template), escaped so a
    // prompt cannot forge log lines.
    TP_LOG(INFO) << "request_prompt id=" << spec.request_id << " prompt=\""
                 << absl::CHexEscape(tokenizer_->Decode(spec.prompt_ids)) << "\"";
  }
  auto state = std::make_unique<RequestState>(id, std::move(spec), std::move(sink), *tokenizer_);
  ++in_flight_;
  absl::MutexLock lock(&inbox_mu_);
  inbox_.submitted.push_back(std::move(state));
  return id;
}

void Engine::Cancel(uint64_t handle) {
  absl::MutexLock lock(&inbox_mu_);
  inbox_.cancelled.push_back(handle);
}

void Engine::DrainInbox() {
  Inbox inbox;
  {
    absl::MutexLock lock(&inbox_mu_);
    std::swap(inbox, inbox_);
  }
  for (auto& r : inbox.submitted) {
    uint64_t id = r->seq_id();
    absl::Status s = scheduler_->AddSequence(id, r->spec().prompt_ids, r->spec().max_new_tokens, r->spec().priority);
    if (!s.ok()) {
      --queued_;
      --in_flight_;
      r->sink().OnError(s, nullptr);
      continue;
    }
    if (r->spec().no_speculation) scheduler_->DisableSpeculation(id);
    requests_[id] = std::move(r);
  }
  for (uint64_t id : inbox.cancelled) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;  // finished already
    v1::GenerateStreamResponse last;
    it->second->Finish(v1::FINISH_REASON_CANCELLED, &last);
    FinishRequest(*it->second, v1::FINISH_REASON_CANCELLED, &last);
  }
}

void Engine::FinishRequest(RequestState& r, v1::FinishReason reason, v1::GenerateStreamResponse* last) {
  const uint64_t id = r.seq_id();
  const absl::Time now = absl::Now();
  if (r.first_scheduled == absl::InfinitePast()) --queued_;
  if (reason == v1::FINISH_REASON_CANCELLED) {
    scheduler_->Abort(id);
  } else {
    scheduler_->Finish(id);
  }
  const int completion = r.num_generated();
  if (r.spec().internal) {
    r.sink().OnDelta(*last);
    --in_flight_;
    requests_.erase(id);
    return;
  }
  metrics_->RequestSuccess(FinishReasonName(reason)).Increment();
  metrics_->e2e_request_latency_seconds->Observe(absl::ToDoubleSeconds(now - r.spec().arrival));
  metrics_->request_prompt_tokens->Observe(r.spec().prompt_ids.size());
  metrics_->request_generation_tokens->Observe(completion);
  if (r.first_token != absl::InfinitePast()) {
    metrics_->request_prefill_time_seconds->Observe(absl::ToDoubleSeconds(r.first_token - r.first_scheduled));
    metrics_->request_decode_time_seconds->Observe(absl::ToDoubleSeconds(now - r.first_token));
  }
  if (options_.log_requests) {
    double ttft = r.first_token == absl::InfinitePast() ? -1 : absl::ToDoubleSeconds(r.first_token - r.spec().arrival);
    TP_LOG(INFO) << absl::StrFormat(
        "request_done id=%s prompt_tokens=%d cached_tokens=%d completion_tokens=%d ttft_s=%.4f total_s=%.4f "
        "finish_reason=%s",
        r.spec().request_id, r.spec().prompt_ids.size(), r.cached_prompt_tokens, completion, ttft,
        absl::ToDoubleSeconds(now - r.spec().arrival), FinishReasonName(reason));
  }
  r.sink().OnDelta(*last);
  --in_flight_;
  requests_.erase(id);  // r is gone after this line
}

void Engine::FailRequest(uint64_t seq_id, const absl::Status& status) {
  auto it = requests_.find(seq_id);
  if (it == requests_.end()) return;
  RequestState& r = *it->second;
  if (r.first_scheduled == absl::InfinitePast()) --queued_;
  scheduler_->Abort(seq_id);
  metrics_->request_failure_total->Increment();
  TP_LOG(WARNING) << "request_failed id=" << r.spec().request_id << " status=" << status.ToString();
  v1::GenerateStreamResponse last;
  r.Finish(v1::FINISH_REASON_ERROR, &last);
  r.sink().OnError(status, &last);
  --in_flight_;
  requests_.erase(it);
}

void Engine::OnGroupLost(const absl::Status& status) {
  if (group_lost_at_ == absl::InfinitePast()) {
    group_lost_at_ = absl::Now();
    TP_LOG(WARNING) << "worker group lost (" << status.message() << "); holding " << requests_.size()
                    << " requests for up to " << absl::FormatDuration(options_.recovery_timeout);
  }
}

bool Engine::RunOneStep() {
  SchedulerOutput out = scheduler_->Schedule();
  for (uint64_t id : out.preempted) {
    (void)id;
    metrics_->num_preemptions_total->Increment();
  }
  // The scheduler owns what finished; what no step has carried to the workers yet waits for the next one.
  undelivered_finished_.insert(undelivered_finished_.end(), out.finished.begin(), out.finished.end());
  if (out.seqs.empty()) return false;
  const absl::Time now = absl::Now();
  wv1::StepPlan plan;
  int num_tokens = 0;
  for (const auto& s : out.seqs) {
    RequestState& r = *requests_.at(s.seq_id);
    if (s.is_new) {
      auto* st = plan.add_starts();
      st->set_seq_id(s.seq_id);
      *st->mutable_sampling() = r.spec().sampling;
      // The token history's one owner is the scheduler's Sequence.
      const Sequence& seq = *scheduler_->sequence(s.seq_id);
      st->mutable_history()->Assign(seq.history.tokens().begin(), seq.history.tokens().end());
      st->set_num_generated(seq.num_generated());
      st->set_prompt_len(seq.prompt_len);
      const bool first_schedule = r.first_scheduled == absl::InfinitePast();
      if (first_schedule) {
        r.first_scheduled = now;
        --queued_;
        r.cached_prompt_tokens = s.num_cached_tokens;
      }
      if (first_schedule && !r.spec().internal) {
        metrics_->request_queue_time_seconds->Observe(absl::ToDoubleSeconds(now - r.spec().arrival));
        metrics_->prefix_cache_queries_total->Increment(r.spec().prompt_ids.size());
        metrics_->prefix_cache_hits_total->Increment(s.num_cached_tokens);
      }
    }
    auto* step = plan.add_seqs();
    step->set_seq_id(s.seq_id);
    step->mutable_token_ids()->Assign(s.token_ids.begin(), s.token_ids.end());
    step->set_start_position(s.start_position);
    step->mutable_block_table()->Assign(s.block_table.begin(), s.block_table.end());
    step->set_sample(s.sample);
    step->set_num_draft_tokens(s.num_draft_tokens);
    step->set_num_proposals(s.num_proposals);
    num_tokens += static_cast<int>(s.token_ids.size());
  }
  for (uint64_t id : undelivered_finished_) plan.add_finished(id);
  undelivered_finished_.clear();

  auto outcome = executor_->RunStep(std::move(plan), options_.step_timeout);
  if (!outcome.ok()) {
    if (absl::IsUnavailable(outcome.status())) {
      OnGroupLost(outcome.status());
      RequeueAll();
      return true;
    }
    TP_LOG(ERROR) << "step failed: " << outcome.status();
    std::vector<uint64_t> ids;
    for (const auto& s : out.seqs) ids.push_back(s.seq_id);
    for (uint64_t id : ids) FailRequest(id, outcome.status());
    return true;
  }
  metrics_->iteration_tokens_total->Observe(num_tokens);
  for (size_t r = 0; r < outcome->step_seconds.size(); ++r) {
    metrics_->WorkerStepTime(static_cast<int>(r)).Observe(outcome->step_seconds[r]);
    metrics_->WorkerAllReduceTime(static_cast<int>(r)).Observe(outcome->allreduce_seconds[r]);
  }

  absl::flat_hash_map<uint64_t, std::vector<int32_t>> sampled;  // in position order, as the workers give them
  for (const auto& t : outcome->result.tokens()) sampled[t.seq_id()].push_back(t.token_id());
  RecordSpeculation(out, sampled);
  scheduler_->OnStepComplete(out, sampled);
  for (const auto& p : outcome->result.proposals()) {
    scheduler_->SetDraftProposals(p.seq_id(), p.num_tokens(), {p.token_ids().begin(), p.token_ids().end()});
  }

  const absl::Time done = absl::Now();
  for (const auto& t : outcome->result.tokens()) {
    auto it = requests_.find(t.seq_id());
    if (it == requests_.end()) continue;
    RequestState& r = *it->second;
    v1::GenerateStreamResponse delta;
    const bool record = !r.spec().internal;
    if (r.first_token == absl::InfinitePast()) {
      r.first_token = done;
      if (record) {
        metrics_->time_to_first_token_seconds->Observe(absl::ToDoubleSeconds(done - r.spec().arrival));
        metrics_->prompt_tokens_total->Increment(r.spec().prompt_ids.size());
      }
      delta.mutable_prompt_token_ids()->Assign(r.spec().prompt_ids.begin(), r.spec().prompt_ids.end());
    } else if (record) {
      metrics_->inter_token_latency_seconds->Observe(absl::ToDoubleSeconds(done - r.last_token));
    }
    r.last_token = done;
    if (record) metrics_->generation_tokens_total->Increment();
    v1::FinishReason reason = r.OnToken(t, &delta);
    if (reason != v1::FINISH_REASON_UNSPECIFIED) {
      FinishRequest(r, reason, &delta);
    } else {
      r.sink().OnDelta(delta);
    }
  }
  return true;
}

void Engine::RequeueAll() {
  // Every worker's KV cache is gone: each request starts again from its token history (prompt + generated,
  // kept by its Sequence), in seniority order, and recomputes. Its sampler state is re-sent with the next
  // SequenceStart.
  scheduler_->RequeueAllForReplay();
}

void Engine::RecordSpeculation(const SchedulerOutput& out,
                               const absl::flat_hash_map<uint64_t, std::vector<int32_t>>& sampled) {
  for (const ScheduledSeq& s : out.seqs) {
    if (s.num_draft_tokens == 0) continue;
    auto got = sampled.find(s.seq_id);
    auto req = requests_.find(s.seq_id);
    if (got == sampled.end() || got->second.empty() || req == requests_.end()) continue;
    // The workers stop after the first token that differs from a proposal, so all but the last are accepted.
    const int accepted = std::min(s.num_draft_tokens, static_cast<int>(got->second.size()) - 1);
    v1::SpeculativeUsage& u = req->second->speculative;
    u.set_num_drafts(u.num_drafts() + 1);
    u.set_num_draft_tokens(u.num_draft_tokens() + s.num_draft_tokens);
    u.set_num_accepted_tokens(u.num_accepted_tokens() + accepted);
    if (req->second->spec().internal) continue;
    metrics_->spec_decode_num_drafts_total->Increment();
    metrics_->spec_decode_num_draft_tokens_total->Increment(s.num_draft_tokens);
    metrics_->spec_decode_num_accepted_tokens_total->Increment(accepted);
    metrics_->spec_decode_acceptance_length->Observe(accepted + 1);
  }
}

void Engine::UpdateGauges() {
  metrics_->num_requests_running->Set(scheduler_->num_running());
  metrics_->num_requests_waiting->Set(scheduler_->num_waiting());
  metrics_->kv_cache_usage_perc->Set(scheduler_->block_manager().usage());
  free_blocks_ = scheduler_->block_manager().num_free_blocks();
}

void Engine::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&inbox_mu_);
      if (stop_) break;
    }
    DrainInbox();
    if (!requests_.empty()) {
      if (!executor_->IsReady()) {
        OnGroupLost(absl::UnavailableError("worker group not ready"));
        if (absl::Now() - group_lost_at_ > options_.recovery_timeout) {
          std::vector<uint64_t> ids;
          for (const auto& [id, r] : requests_) ids.push_back(id);
          for (uint64_t id : ids) {
            FailRequest(id, WithReason(absl::UnavailableError(absl::StrCat(
                                           "the tensor-parallel worker group was lost and did not recover within ",
                                           absl::FormatDuration(options_.recovery_timeout),
                                           " (--recovery-timeout); retry")),
                                       reason::kWorkerGroupLost));
          }
        } else {
          executor_->WaitReady(absl::Milliseconds(100));
        }
        UpdateGauges();
        continue;
      }
      if (group_lost_at_ != absl::InfinitePast()) {
        TP_LOG(INFO) << "worker group is back; replaying " << requests_.size() << " requests from their token history";
        group_lost_at_ = absl::InfinitePast();
      }
      if (executor_->generation() != generation_seen_) {
        // The group was re-formed: every worker's KV cache and sampler state is new.
        RequeueAll();
        generation_seen_ = executor_->generation();
      }
      bool ran = RunOneStep();
      UpdateGauges();
      if (!ran) {
        absl::MutexLock lock(&inbox_mu_);
        auto has_input = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(inbox_mu_) {
          return stop_ || !inbox_.submitted.empty() || !inbox_.cancelled.empty();
        };
        inbox_mu_.AwaitWithTimeout(absl::Condition(&has_input), absl::Milliseconds(5));
      }
    } else {
      UpdateGauges();
      absl::MutexLock lock(&inbox_mu_);
      auto has_input = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(inbox_mu_) {
        return stop_ || !inbox_.submitted.empty() || !inbox_.cancelled.empty();
      };
      inbox_mu_.AwaitWithTimeout(absl::Condition(&has_input), absl::Milliseconds(100));
    }
  }
  // Stopping (shutdown, or a drain that timed out): the server ends what is still in flight, so it is
  // UNAVAILABLE (a retry policy moves it to another replica), not CANCELLED (which says the caller cancelled).
  DrainInbox();
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : requests_) ids.push_back(id);
  for (uint64_t id : ids) {
    FailRequest(id, WithReason(absl::UnavailableError("the server shut down before the request finished (drain "
                                                      "timeout, --drain-timeout); retry on another replica"),
                               reason::kDraining));
  }
}

}  // namespace tpserve::coordinator
