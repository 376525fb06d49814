// Iteration-level continuous-batching scheduler with chunked prefill, recompute preemption and prefix reuse.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/sampling_limits.h"
#include "coordinator/engine/block_manager.h"
#include "coordinator/engine/ngram_proposer.h"
#include "coordinator/engine/sequence.h"

namespace tpserve::coordinator {

// Speculative decoding (issue 17). A decoding sequence with proposals runs its last token plus up to
// num_speculative_tokens proposed ones in one step (k + 1 query tokens, counted against
// max_num_batched_tokens like a prefill chunk); the workers verify them (worker.v1 SeqStep.num_draft_tokens)
// and OnStepComplete keeps the accepted prefix plus the model's next token and rolls the KV of the rejected
// positions back. Proposals never preempt anyone: a sequence that would need a block it cannot get for free
// runs without them. Output is unchanged by construction: every kept token is one the model sampled.

enum class SpeculativeMethod {
  kNgram,  // prompt lookup on the coordinator (ngram_proposer.h)
  kDraft,  // a draft model on rank 0 (worker/draft_runner.h): proposals arrive with each step's result
};

struct SpeculativeConfig {
  int num_speculative_tokens = 0;  // --num-speculative-tokens K; 0 = off
  SpeculativeMethod method = SpeculativeMethod::kNgram;  // --speculative-method
  NgramProposerOptions ngram;      // --speculative-method ngram
  // --speculative-step-tokens N: query tokens a step can run at about the cost of a plain decode step (0 = no
  // batch-size cap). See MaxProposalsForBatch.
  int step_tokens = 0;
};

// Choosing k from the batch size. A step verifying k proposals for each of B sequences runs B x (k + 1) query
// tokens. While that stays within what the weight read hides (N tokens: engine-bench --verify-tokens shows the
// step cost flat up to N, then growing with the tokens), proposals are nearly free; past it a step costs about
// its tokens, so k proposals cost (k + 1) plain steps and pay only if all are accepted: never worth it. So each
// of B running sequences gets at most N / B - 1 proposals (integer division; 0 once B > N / 2), on top of its
// own adapted k. On the 2-core avx512-bf16 machine N is about 10 (docs/PERFORMANCE.md, speculative
// decoding); a GPU's is in the hundreds. step_tokens 0: no cap (kMaxSpeculativeTokens).
int MaxProposalsForBatch(const SpeculativeConfig& config, int batch_size);

// The speculative flags' rules, owned here: ValidateSchedulerConfig applies them, and the CLI calls this at
// startup (cli/server_flags.cc) so a bad flag is refused before any worker starts. INVALID_ARGUMENT naming the
// flag. `min_tokens`: the least --num-speculative-tokens allowed; 0 in a SchedulerConfig (0 = off), 1 where a
// --speculative-method was asked for (speculation without proposals is a mistake worth reporting).
absl::Status ValidateSpeculativeConfig(const SpeculativeConfig& config, int min_tokens);

struct SchedulerConfig {
  int num_blocks = 0;  // KV pool size (the minimum any worker can afford)
  int block_size = 16;
  int max_num_seqs = 256;             // running sequences at once
  int max_num_batched_tokens = 2048;  // tokens run per step, prefill + decode
  int max_model_len = 0;              // prompt + max_new_tokens limit
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  SpeculativeConfig speculative;
};

// INVALID_ARGUMENT naming the first bad field.
absl::Status ValidateSchedulerConfig(const SchedulerConfig& config);

// One sequence's work in a step; maps 1:1 onto worker.v1 SeqStep (and SequenceStart when is_new).
struct ScheduledSeq {
  uint64_t seq_id = 0;
  std::vector<int32_t> token_ids;    // tokens to run this step (prefill chunk or 1 decode token)
  int start_position = 0;            // position of token_ids[0]; [0, start_position) is already in the KV cache
  std::vector<int32_t> block_table;  // blocks covering [0, start_position + token_ids.size())
  bool sample = false;               // this step completes the known tokens (prompt or decode): sample one
  bool is_new = false;               // first schedule since (re)admission: send SequenceStart first
  int num_cached_tokens = 0;         // tokens served from the prefix cache (valid when is_new)
  int num_draft_tokens = 0;          // the last num_draft_tokens of token_ids are proposals to verify
  // SpeculativeMethod::kDraft: proposals rank 0's draft model should return after this step (worker.v1
  // SeqStep.num_proposals), for SetDraftProposals.
  int num_proposals = 0;
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> seqs;   // running decodes first, then prefill chunks, then new admissions
  std::vector<uint64_t> preempted;  // released their KV this step; will come back is_new
  // Finished or aborted since the previous Schedule() after having run on workers: StepPlan.finished.
  std::vector<uint64_t> finished;
  int num_batched_tokens = 0;       // sum of token_ids sizes
};

// Plans each engine iteration: running decodes first (1 token each), then partially prefilled sequences,
// then admissions from the waiting queue (lower priority value first, FCFS within a priority; admission
// stops at the first request that does not fit, so big requests are not starved). Prompts are chunked so a
// step never exceeds max_num_batched_tokens. When a sequence needs a block and none is free, the most junior
// running sequence (worst priority, latest arrival) that has not been scheduled this step is preempted by
// recompute: it frees its blocks and goes back to the waiting queue with all its tokens, ahead of everything
// that arrived after it. A sequence never preempts a more senior one; if it is itself the most junior, it
// yields. AddSequence rejects any request that could not run alone in the whole pool, so the most senior
// running sequence can always progress and every request eventually finishes.
//
// Protocol: Schedule() -> run the step -> OnStepComplete() -> (Finish() for stopped sequences) -> Schedule().
// Abort() may come at any time. Not thread-safe: the engine loop serialises every call.
class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);  // config must pass ValidateSchedulerConfig
  // Validates the config first (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerConfig& config);

  // Admission control (the queue limit) is the engine's: the scheduler queues whatever it is given, so a
  // request re-queued after a worker loss, like a preempted one, is never refused for a full queue.
  // INVALID_ARGUMENT for an empty prompt, negative token ids, max_new_tokens < 1, prompt + max_new_tokens > max_model_len, or a request that could
  // never fit in the whole KV pool (or, without chunked prefill, in one step's token budget); ALREADY_EXISTS
  // for a seq_id that is still known.
  absl::Status AddSequence(uint64_t seq_id, std::vector<int32_t> prompt_ids, int max_new_tokens, int priority);
  // Removes a sequence wherever it is (waiting, running, preempted) and frees its blocks. Idempotent.
  void Abort(uint64_t seq_id);
  // Plans one iteration under max_num_batched_tokens / max_num_seqs and the block pool.
  SchedulerOutput Schedule();
  // After the step ran: appends the sampled tokens (seq_id -> tokens in position order: one, or for a step
  // with proposals 1 + the accepted ones, as worker.v1 StepResult gives them) to the sequences that sampled
  // and advances num_computed_tokens for everything that ran; newly full blocks enter the prefix cache.
  // Rejected proposals are rolled back: blocks past the computed tokens go back to the pool. Sequences that
  // were aborted or finished meanwhile are skipped. Sequences stay running until Finish().
  void OnStepComplete(const SchedulerOutput& out,
                      const absl::flat_hash_map<uint64_t, std::vector<int32_t>>& sampled);
  // The workers lost every KV cache and sampler state (worker group re-formed): every running sequence goes
  // back to the waiting queue with all its tokens (its seniority kept; not counted as a preemption) and the
  // prefix cache is emptied. The next admission recomputes each from its token history.
  void RequeueAllForReplay();
  // SpeculativeMethod::kDraft: the draft model's proposals for `seq_id`, continuing a history of
  // `num_tokens` tokens (worker.v1 DraftProposal), after OnStepComplete of the step that asked for them.
  // Kept for the sequence's next decode only when its history still has that length (proposals that no
  // longer follow the history would only be rejected). Ignored for unknown sequences.
  void SetDraftProposals(uint64_t seq_id, int num_tokens, std::vector<int32_t> tokens);
  // The request opted out (GenerateRequest.no_speculation): `seq_id` never gets proposals, nor asks the draft
  // model for any, for the rest of its life (preemption and replay included). Ignored for unknown sequences.
  void DisableSpeculation(uint64_t seq_id);
  // The engine decided the sequence stopped (EOS, stop string, length): frees its blocks; its full blocks stay
  // in the prefix cache for reuse. Idempotent.
  void Finish(uint64_t seq_id);
  // The workers' KV caches were lost (worker group re-formed): cached prefix blocks hold nothing any more,
  // so none may be matched again. Running sequences' KV is gone too: abort (and re-add) them first.
  void ClearPrefixCache() { blocks_.DropCachedBlocks(); }

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  // Something is waiting or running (a running sequence waiting only for Finish() counts).
  bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
  const BlockManager& block_manager() const { return blocks_; }
  int64_t num_preemptions() const { return num_preemptions_; }
  const PrefixCacheStats& prefix_cache_stats() const { return blocks_.prefix_cache_stats(); }
  const SchedulerConfig& config() const { return config_; }

  // Introspection for the engine (SequenceStart.history / num_generated / prompt_len, detokenizing) and
  // tests; nullptr when unknown. Valid until the next non-const call.
  const Sequence* sequence(uint64_t seq_id) const;
  // Number of live sequences holding each block, [num_blocks]; tests compare it with the pool's refcounts.
  std::vector<int> BlockOwnerCounts() const;

 private:
  struct SeniorityLess {
    bool operator()(const Sequence* a, const Sequence* b) const { return SeniorTo(*a, *b); }
  };
  using SeqSet = std::set<Sequence*, SeniorityLess>;
  // Per-Schedule() bookkeeping.
  struct StepState {
    int token_budget = 0;
    int max_proposals = 0;  // MaxProposalsForBatch of the running batch, per sequence
    bool preempted_any = false;
    absl::flat_hash_set<uint64_t> scheduled;  // seq ids in the output already: never victims
  };

  // Frees `seq`'s blocks and moves it from running to waiting with all its tokens.
  void Preempt(Sequence* seq, StepState* step, SchedulerOutput* out);
  // The most junior running sequence other than `self` not yet scheduled this step and not finished
  // generating, if it is junior to `self`; nullptr otherwise.
  Sequence* PickVictim(const Sequence* self, const StepState& step) const;
  // Makes `seq` hold blocks for `num_tokens` tokens, preempting juniors as needed. False when it could not.
  bool GrowBlocks(Sequence* seq, int num_tokens, StepState* step, SchedulerOutput* out);
  // Admits waiting sequences until one does not fit.
  void AdmitWaiting(StepState* step, SchedulerOutput* out);
  // Schedules tokens [num_computed_tokens, + num_tokens) of `seq`, then `drafts` (proposals to verify).
  void Emit(Sequence* seq, int num_tokens, StepState* step, SchedulerOutput* out,
            std::vector<int32_t> drafts = {});
  // Proposals for a decoding sequence about to run its last token, within its limits and `budget` tokens.
  // Resumes a paused sequence's speculation when its pause is over.
  std::vector<int32_t> ProposeFor(Sequence* seq, int budget) const;
  // SpeculativeMethod::kDraft: proposals to ask of the draft model in a step where `seq` samples.
  int DraftProposalsWanted(const Sequence& seq) const;
  // Adapts seq->spec_k to how many of `proposed` tokens were accepted.
  void RecordAcceptance(Sequence* seq, int proposed, int accepted) const;
  // Releases blocks past BlocksFor(num_computed_tokens): the KV of rejected proposals.
  void TrimBlocks(Sequence* seq);
  // Hashes and registers blocks that became full within [0, num_computed_tokens).
  void CacheComputedBlocks(Sequence* seq);
  void Remove(uint64_t seq_id);

  SchedulerConfig config_;
  BlockManager blocks_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  SeqSet waiting_;  // front = next to admit
  SeqSet running_;
  std::vector<uint64_t> finished_since_schedule_;
  uint64_t next_arrival_ = 0;
  int64_t num_preemptions_ = 0;
};

}  // namespace tpserve::coordinator
