// Iteration-level continuous-batching scheduler with chunked prefill, recompute preemption and prefix reuse.
#include "coordinator/engine/scheduler.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tpserve::coordinator {

namespace {

// Adaptive speculation (per sequence): the proposal length follows acceptance (doubles after a fully
// accepted proposal, else 1 + what was accepted), and speculation pauses for kSpecPauseTokens generated
// tokens when a sequence's moving acceptance rate is under kSpecOffBelow after kSpecMinDrafts proposals,
// then probes again with k = 1. A verify step with k proposals costs a decode step plus k rows
// (docs/PERFORMANCE.md), so a sequence accepting under a tenth of its proposals cannot win and only spends
// the batch's token budget; text often starts repeating itself later, hence a pause rather than an end.
// The probe alone decides what follows: its acceptance is weighed against kSpecOffBelow as if
// kSpecMinDrafts proposals had been seen, so a rejected probe pauses again at once (a draft that keeps
// disagreeing costs one verify row and one draft step per pause, not kSpecMinDrafts of them: the issue's
// floor) and an accepted one resumes speculation. With ngram a pause also ends as soon as the last ngram_max
// tokens match an earlier occurrence (ProposeFor): a copy has begun, and a rejected probe pauses again.
constexpr double kSpecEmaWeight = 0.3;
constexpr double kSpecOffBelow = 0.1;
constexpr int kSpecMinDrafts = 8;
constexpr int kSpecPauseTokens = 64;

}  // namespace

absl::Status ValidateSchedulerConfig(const SchedulerConfig& c) {
  auto bad = [](const char* field, int64_t v, const char* want) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler config: ", field, " = ", v, " (", want, ")"));
  };
  if (c.num_blocks <= 0) return bad("num_blocks", c.num_blocks, "must be > 0");
  if (c.block_size <= 0) return bad("block_size", c.block_size, "must be > 0");
  if (c.max_num_seqs <= 0) return bad("max_num_seqs", c.max_num_seqs, "must be > 0");
  if (c.max_num_batched_tokens <= 0) {
    return bad("max_num_batched_tokens", c.max_num_batched_tokens, "must be > 0");
  }
  if (c.max_model_len <= 0) return bad("max_model_len", c.max_model_len, "must be > 0");
  return ValidateSpeculativeConfig(c.speculative, /*min_tokens=*/0);
}

absl::Status ValidateSpeculativeConfig(const SpeculativeConfig& c, int min_tokens) {
  const int k = c.num_speculative_tokens;
  if (k < min_tokens || k > kMaxSpeculativeTokens) {
    return absl::InvalidArgumentError(absl::StrCat("--num-speculative-tokens = ", k, " must be in [", min_tokens,
                                                   ", ", kMaxSpeculativeTokens, "]"));
  }
  if (c.step_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--speculative-step-tokens = ", c.step_tokens, " must be >= 0 (0 = no batch-size cap)"));
  }
  if (k > 0) return ValidateNgramProposerOptions(c.ngram);
  return absl::OkStatus();
}

int MaxProposalsForBatch(const SpeculativeConfig& config, int batch_size) {
  if (config.step_tokens == 0) return kMaxSpeculativeTokens;
  return std::clamp(config.step_tokens / std::max(batch_size, 1) - 1, 0, kMaxSpeculativeTokens);
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config),
      blocks_(BlockManagerOptions{config.num_blocks, config.block_size, config.enable_prefix_caching}) {
  const absl::Status s = ValidateSchedulerConfig(config);
  TP_CHECK(s.ok()) << s;
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerConfig& config) {
  absl::Status s = ValidateSchedulerConfig(config);
  if (!s.ok()) return s;
  return std::make_unique<Scheduler>(config);
}

absl::Status Scheduler::AddSequence(uint64_t seq_id, std::vector<int32_t> prompt_ids, int max_new_tokens,
                                    int priority) {
  if (prompt_ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("seq ", seq_id, ": prompt_ids is empty"));
  }
  for (size_t i = 0; i < prompt_ids.size(); ++i) {
    if (prompt_ids[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("seq ", seq_id, ": prompt_ids[", i, "] = ", prompt_ids[i], " is negative"));
    }
  }
  if (max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq ", seq_id, ": max_new_tokens = ", max_new_tokens, " must be >= 1"));
  }
  const int64_t prompt_len = static_cast<int64_t>(prompt_ids.size());
  const int64_t total = prompt_len + max_new_tokens;
  if (total > config_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "seq ", seq_id, ": prompt (", prompt_len, " tokens) + max_new_tokens (", max_new_tokens, ") = ", total,
        " exceeds max_model_len ", config_.max_model_len, "; shorten the prompt or lower max_new_tokens"));
  }
  // The last generated token is never fed back, so the KV holds at most total - 1 tokens.
  const int64_t max_kv_tokens = total - 1;
  const int64_t blocks_needed = blocks_.BlocksFor(max_kv_tokens);
  if (blocks_needed > config_.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "seq ", seq_id, ": needs up to ", blocks_needed, " KV blocks (", max_kv_tokens, " tokens / block_size ",
        config_.block_size, ") but the whole pool has num_blocks = ", config_.num_blocks,
        "; shorten the prompt or lower max_new_tokens"));
  }
  if (!config_.enable_chunked_prefill && max_kv_tokens > config_.max_num_batched_tokens) {
    // A recompute after preemption prefills every token at once.
    return absl::InvalidArgumentError(absl::StrCat(
        "seq ", seq_id, ": up to ", max_kv_tokens, " tokens must prefill in one step but max_num_batched_tokens = ",
        config_.max_num_batched_tokens, " and chunked prefill is off"));
  }
  if (seqs_.contains(seq_id)) {
    return absl::AlreadyExistsError(absl::StrCat("seq ", seq_id, " is already scheduled"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->seq_id = seq_id;
  seq->priority = priority;
  seq->arrival = next_arrival_++;
  seq->prompt_len = static_cast<int>(prompt_len);
  seq->max_new_tokens = max_new_tokens;
  std::optional<NgramProposerOptions> ngram;
  if (config_.speculative.num_speculative_tokens > 0 && config_.speculative.method == SpeculativeMethod::kNgram) {
    ngram = config_.speculative.ngram;
  }
  seq->history = TokenHistory(std::move(prompt_ids), ngram);
  seq->spec_k = config_.speculative.num_speculative_tokens;
  seq->status = SequenceStatus::kWaiting;
  waiting_.insert(seq.get());
  seqs_.emplace(seq_id, std::move(seq));
  return absl::OkStatus();
}

const Sequence* Scheduler::sequence(uint64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

void Scheduler::Remove(uint64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  Sequence* seq = it->second.get();
  if (seq->status == SequenceStatus::kRunning) {
    blocks_.Release(seq->block_table);
    running_.erase(seq);
  } else {
    TP_CHECK(seq->block_table.empty()) << "waiting seq " << seq_id << " holds blocks";
    waiting_.erase(seq);
  }
  if (seq->ever_scheduled) finished_since_schedule_.push_back(seq_id);
  seqs_.erase(it);
}

void Scheduler::Abort(uint64_t seq_id) { Remove(seq_id); }

void Scheduler::Finish(uint64_t seq_id) { Remove(seq_id); }

void Scheduler::Preempt(Sequence* seq, StepState* step, SchedulerOutput* out) {
  TP_CHECK(seq->status == SequenceStatus::kRunning) << "preempting seq " << seq->seq_id;
  blocks_.Release(seq->block_table);
  seq->block_table.clear();
  seq->num_computed_tokens = 0;
  seq->num_registered_blocks = 0;
  seq->status = SequenceStatus::kWaiting;
  ++seq->num_preemptions;
  running_.erase(seq);
  waiting_.insert(seq);  // never dropped (the queue limit is for new requests, in the engine)
  out->preempted.push_back(seq->seq_id);
  step->preempted_any = true;
  ++num_preemptions_;
}

Sequence* Scheduler::PickVictim(const Sequence* self, const StepState& step) const {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* s = *it;
    if (s == self) continue;
    if (SeniorTo(*s, *self)) return nullptr;  // only seniors left
    if (step.scheduled.contains(s->seq_id) || s->reached_max_tokens()) continue;
    return s;
  }
  return nullptr;
}

bool Scheduler::GrowBlocks(Sequence* seq, int num_tokens, StepState* step, SchedulerOutput* out) {
  const int need = blocks_.BlocksFor(num_tokens) - static_cast<int>(seq->block_table.size());
  if (need <= 0) return true;
  while (blocks_.num_free_blocks() < need) {
    Sequence* victim = PickVictim(seq, *step);
    if (victim == nullptr) return false;
    Preempt(victim, step, out);
  }
  auto fresh = blocks_.Allocate(need);
  TP_CHECK(fresh.ok()) << fresh.status();
  seq->block_table.insert(seq->block_table.end(), fresh->begin(), fresh->end());
  return true;
}

void Scheduler::Emit(Sequence* seq, int num_tokens, StepState* step, SchedulerOutput* out,
                     std::vector<int32_t> drafts) {
  const int start = seq->num_computed_tokens;
  const int num_drafts = static_cast<int>(drafts.size());
  TP_CHECK(num_tokens > 0 && start + num_tokens <= seq->num_tokens()) << "seq " << seq->seq_id;
  TP_CHECK(num_drafts == 0 || start + num_tokens == seq->num_tokens()) << "seq " << seq->seq_id;
  TP_CHECK(static_cast<int>(seq->block_table.size()) == blocks_.BlocksFor(start + num_tokens + num_drafts))
      << "seq " << seq->seq_id << " holds " << seq->block_table.size() << " blocks for "
      << start + num_tokens + num_drafts << " tokens";
  ScheduledSeq s;
  s.seq_id = seq->seq_id;
  const std::vector<int32_t>& history = seq->history.tokens();
  s.token_ids.assign(history.begin() + start, history.begin() + start + num_tokens);
  s.token_ids.insert(s.token_ids.end(), drafts.begin(), drafts.end());
  s.num_draft_tokens = num_drafts;
  num_tokens += num_drafts;
  s.start_position = start;
  s.block_table = seq->block_table;
  s.sample = start + num_tokens - num_drafts == seq->num_tokens();
  if (s.sample) s.num_proposals = std::min(DraftProposalsWanted(*seq), step->max_proposals);
  s.is_new = seq->needs_start;
  s.num_cached_tokens = seq->num_cached_tokens;
  seq->needs_start = false;
  seq->ever_scheduled = true;
  step->token_budget -= num_tokens;
  step->scheduled.insert(seq->seq_id);
  out->num_batched_tokens += num_tokens;
  out->seqs.push_back(std::move(s));
}

void Scheduler::AdmitWaiting(StepState* step, SchedulerOutput* out) {
  const int bs = config_.block_size;
  while (!waiting_.empty() && num_running() < config_.max_num_seqs && step->token_budget > 0) {
    Sequence* seq = *waiting_.begin();
    const int n_tokens = seq->num_tokens();
    std::vector<int32_t> hits;
    if (blocks_.prefix_caching_enabled()) {
      ExtendBlockHashes(seq->history.tokens(), bs, &seq->block_hashes);
      // Keep at least the last known token to run: the model needs it to produce logits.
      hits = blocks_.MatchPrefix(seq->block_hashes, seq->history.tokens(), (n_tokens - 1) / bs);
    }
    const int cached = static_cast<int>(hits.size()) * bs;
    const int remaining = n_tokens - cached;
    int chunk = remaining;
    if (remaining > step->token_budget) {
      if (!config_.enable_chunked_prefill) break;
      chunk = step->token_budget;
    }
    const int need = blocks_.BlocksFor(cached + chunk) - static_cast<int>(hits.size());
    if (blocks_.NumFreeAfterSharing(hits) < need) break;  // head-of-line: keep FCFS order fair

    blocks_.Share(hits);
    auto fresh = blocks_.Allocate(need);
    TP_CHECK(fresh.ok()) << fresh.status();
    seq->block_table = std::move(hits);
    seq->block_table.insert(seq->block_table.end(), fresh->begin(), fresh->end());
    seq->num_computed_tokens = cached;
    seq->num_registered_blocks = cached / bs;
    seq->num_cached_tokens = cached;
    seq->prefill_len = n_tokens;
    seq->needs_start = true;
    seq->status = SequenceStatus::kRunning;
    waiting_.erase(waiting_.begin());
    running_.insert(seq);
    blocks_.RecordPrefixQuery(n_tokens, cached);
    Emit(seq, chunk, step, out);
  }
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  out.finished = std::move(finished_since_schedule_);
  finished_since_schedule_.clear();
  StepState step;
  step.token_budget = config_.max_num_batched_tokens;
  step.max_proposals = MaxProposalsForBatch(config_.speculative, num_running());
  // Snapshot: Preempt() edits running_ while we walk it.
  const std::vector<Sequence*> order(running_.begin(), running_.end());

  // 1. Decodes: one token each, so they are never stalled behind a long prompt.
  for (Sequence* seq : order) {
    if (step.token_budget <= 0) break;
    if (seq->status != SequenceStatus::kRunning || !seq->prefill_done() || seq->reached_max_tokens()) continue;
    const int pending = seq->num_tokens() - seq->num_computed_tokens;
    if (pending <= 0) continue;  // no sampled token arrived for it; nothing to run
    const int n = std::min(pending, step.token_budget);
    std::vector<int32_t> drafts;
    if (n == pending) drafts = ProposeFor(seq, std::min(step.token_budget - n, step.max_proposals));
    if (!drafts.empty()) {
      // Proposals take only blocks that are free now: they never preempt anyone.
      const int need = blocks_.BlocksFor(seq->num_computed_tokens + n + static_cast<int>(drafts.size())) -
                       static_cast<int>(seq->block_table.size());
      if (need > blocks_.num_free_blocks()) drafts.clear();
    }
    if (!GrowBlocks(seq, seq->num_computed_tokens + n + static_cast<int>(drafts.size()), &step, &out)) {
      Preempt(seq, &step, &out);  // it is the most junior that could give blocks back
      continue;
    }
    Emit(seq, n, &step, &out, std::move(drafts));
  }

  // 2. Prefills already under way, chunked to the remaining budget and to the blocks that can be had.
  for (Sequence* seq : order) {
    if (step.token_budget <= 0) break;
    if (seq->status != SequenceStatus::kRunning || seq->prefill_done()) continue;
    const int remaining = seq->num_tokens() - seq->num_computed_tokens;
    int n = remaining;
    if (remaining > step.token_budget) {
      if (!config_.enable_chunked_prefill) continue;
      n = step.token_budget;
    }
    if (!GrowBlocks(seq, seq->num_computed_tokens + n, &step, &out)) {
      if (!config_.enable_chunked_prefill) continue;
      // No junior left to preempt: run what fits in the blocks that are free; keep our blocks otherwise.
      const int capacity =
          (static_cast<int>(seq->block_table.size()) + blocks_.num_free_blocks()) * config_.block_size -
          seq->num_computed_tokens;
      n = std::min(n, capacity);
      if (n <= 0) continue;
      const bool grown = GrowBlocks(seq, seq->num_computed_tokens + n, &step, &out);
      TP_CHECK(grown) << "seq " << seq->seq_id << ": " << n << " tokens should fit the free blocks";
    }
    Emit(seq, n, &step, &out);
  }

  // 3. Admissions, unless this step had to preempt (memory is tight; let the preempted go first).
  if (!step.preempted_any) AdmitWaiting(&step, &out);
  return out;
}

void Scheduler::CacheComputedBlocks(Sequence* seq) {
  if (!blocks_.prefix_caching_enabled()) return;
  const int bs = config_.block_size;
  const int full = seq->num_computed_tokens / bs;
  if (full <= seq->num_registered_blocks) return;
  ExtendBlockHashes(seq->history.tokens(), bs, &seq->block_hashes);
  for (int b = seq->num_registered_blocks; b < full; ++b) {
    const BlockHash parent = b == 0 ? kRootBlockHash : seq->block_hashes[b - 1];
    blocks_.CacheFullBlock(seq->block_table[b], seq->block_hashes[b], parent,
                           absl::MakeConstSpan(seq->history.tokens()).subspan(static_cast<size_t>(b) * bs, bs));
  }
  seq->num_registered_blocks = full;
}

void Scheduler::OnStepComplete(const SchedulerOutput& out,
                               const absl::flat_hash_map<uint64_t, std::vector<int32_t>>& sampled) {
  for (const ScheduledSeq& s : out.seqs) {
    auto it = seqs_.find(s.seq_id);
    if (it == seqs_.end()) continue;  // aborted or finished while the step ran
    Sequence* seq = it->second.get();
    const int known = static_cast<int>(s.token_ids.size()) - s.num_draft_tokens;  // tokens from token_ids
    if (seq->status != SequenceStatus::kRunning || seq->num_computed_tokens != s.start_position ||
        seq->num_computed_tokens + known > seq->num_tokens()) {
      TP_LOG(WARNING) << "seq " << s.seq_id << ": ignoring a stale step result (start_position "
                      << s.start_position << ", computed " << seq->num_computed_tokens << ")";
      continue;
    }
    seq->num_computed_tokens += known;
    if (s.sample && seq->num_computed_tokens == seq->num_tokens()) {
      auto tok = sampled.find(s.seq_id);
      if (tok != sampled.end() && !tok->second.empty()) {
        const std::vector<int32_t>& got = tok->second;
        // got[i] is the model's token after position start + known - 1 + i; proposal i was accepted when it
        // equals got[i], and then its KV (computed this step) is valid too.
        int accepted = 0;
        while (accepted < s.num_draft_tokens && accepted + 1 < static_cast<int>(got.size()) &&
               got[accepted] == s.token_ids[known + accepted]) {
          ++accepted;
        }
        seq->history.Append(absl::MakeConstSpan(got).first(accepted + 1));
        seq->num_computed_tokens += accepted;
        if (s.num_draft_tokens > 0) RecordAcceptance(seq, s.num_draft_tokens, accepted);
      }
    }
    TrimBlocks(seq);
    CacheComputedBlocks(seq);
  }
}

std::vector<int32_t> Scheduler::ProposeFor(Sequence* seq, int budget) const {
  // A paused ngram sequence probes at the end of its pause, or as soon as its last ngram_max tokens occurred
  // before: the text has started repeating itself (a loop, a quote), what the pause was waiting for.
  // Early probes back off: after p pauses without an accepted proposal, one comes no sooner than 2^p tokens
  // into the pause, so text that repeats but keeps being mispredicted costs O(log) probes per pause.
  const bool paused = seq->spec_k == 0 && seq->spec_resume_at > 0;
  if (paused && config_.speculative.method == SpeculativeMethod::kNgram &&
      seq->num_generated() < seq->spec_resume_at &&
      seq->num_generated() >= seq->spec_resume_at - kSpecPauseTokens + (1 << std::min(seq->spec_num_pauses, 6)) &&
      seq->history.LongestNgramRecurs()) {
    seq->spec_resume_at = seq->num_generated();
  }
  if (seq->spec_k == 0 && seq->spec_resume_at > 0 && seq->num_generated() >= seq->spec_resume_at) {
    seq->spec_k = 1;  // probe again after a pause
    seq->spec_acceptance = kSpecOffBelow;
    seq->spec_num_drafts = kSpecMinDrafts - 1;
    seq->spec_resume_at = 0;
  }
  // Every kept proposal becomes a generated token, and the model adds one more: stay within max_new_tokens.
  const int k = std::min({seq->spec_k, budget, seq->max_new_tokens - seq->num_generated() - 1});
  if (config_.speculative.method == SpeculativeMethod::kDraft) {
    std::vector<int32_t> drafts = std::move(seq->draft_proposals);
    seq->draft_proposals.clear();
    drafts.resize(std::min(drafts.size(), static_cast<size_t>(std::max(k, 0))));
    return drafts;
  }
  if (k <= 0) return {};
  return seq->history.ProposeNgram(k);
}

int Scheduler::DraftProposalsWanted(const Sequence& seq) const {
  if (config_.speculative.num_speculative_tokens == 0 || config_.speculative.method != SpeculativeMethod::kDraft) {
    return 0;
  }
  // The proposal length the next decode will use as far as is known now (this step's acceptance adapts it
  // afterwards; ProposeFor trims). A paused sequence asks for its probe one step ahead.
  int want = seq.spec_k;
  if (want == 0 && seq.spec_resume_at > 0 && seq.num_generated() + 1 >= seq.spec_resume_at) want = 1;
  // This step generates at least one token; the next keeps at most max_new_tokens - generated - 1 proposals.
  return std::max(0, std::min(want, seq.max_new_tokens - seq.num_generated() - 2));
}

void Scheduler::DisableSpeculation(uint64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  // spec_k 0 with no resume point: neither ProposeFor nor DraftProposalsWanted ever proposes again.
  it->second->spec_k = 0;
  it->second->spec_resume_at = 0;
  it->second->draft_proposals.clear();
  it->second->history.DropNgramIndex();
}

void Scheduler::SetDraftProposals(uint64_t seq_id, int num_tokens, std::vector<int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second->num_tokens() != num_tokens) return;
  for (int32_t t : tokens) {
    if (t < 0) return;  // the workers check the vocabulary when the proposals run
  }
  it->second->draft_proposals = std::move(tokens);
}

void Scheduler::RecordAcceptance(Sequence* seq, int proposed, int accepted) const {
  ++seq->spec_num_drafts;
  seq->spec_acceptance = (1 - kSpecEmaWeight) * seq->spec_acceptance +
                         kSpecEmaWeight * static_cast<double>(accepted) / proposed;
  if (accepted > 0) seq->spec_num_pauses = 0;
  if (seq->spec_num_drafts >= kSpecMinDrafts && seq->spec_acceptance < kSpecOffBelow) {
    seq->spec_k = 0;
    seq->spec_resume_at = seq->num_generated() + kSpecPauseTokens;
    ++seq->spec_num_pauses;
    return;
  }
  const int max_k = config_.speculative.num_speculative_tokens;
  seq->spec_k = accepted == proposed ? std::min(max_k, 2 * proposed) : std::min(max_k, accepted + 1);
}

void Scheduler::TrimBlocks(Sequence* seq) {
  const size_t keep = static_cast<size_t>(blocks_.BlocksFor(seq->num_computed_tokens));
  if (seq->block_table.size() <= keep) return;
  // These blocks were allocated fresh for proposals past the computed tokens: never shared, never cached.
  blocks_.Release(absl::MakeConstSpan(seq->block_table).subspan(keep));
  seq->block_table.resize(keep);
}

void Scheduler::RequeueAllForReplay() {
  const std::vector<Sequence*> running(running_.begin(), running_.end());
  for (Sequence* seq : running) {
    blocks_.Release(seq->block_table);
    seq->block_table.clear();
    seq->num_computed_tokens = 0;
    seq->num_registered_blocks = 0;
    seq->status = SequenceStatus::kWaiting;
    running_.erase(seq);
    waiting_.insert(seq);
  }
  // Nothing any worker held survives; finished ids mean nothing to the new workers.
  finished_since_schedule_.clear();
  for (auto& [id, seq] : seqs_) seq->ever_scheduled = false;
  blocks_.DropCachedBlocks();
}

std::vector<int> Scheduler::BlockOwnerCounts() const {
  std::vector<int> owners(config_.num_blocks, 0);
  for (const Sequence* seq : running_) {
    for (int32_t b : seq->block_table) ++owners[b];
  }
  return owners;
}

}  // namespace tpserve::coordinator
