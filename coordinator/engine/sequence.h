// One request's scheduling state: its tokens (prompt + generated), KV progress and block table.
#pragma once

#include <cstdint>
#include <vector>

#include "coordinator/engine/prefix_cache.h"
#include "coordinator/engine/token_history.h"

namespace tpserve::coordinator {

enum class SequenceStatus { kWaiting, kRunning };

// Owned by the Scheduler; the engine reads it through Scheduler::sequence() (e.g. to build SequenceStart:
// history = history.tokens(), num_generated, prompt_len). Not thread-safe, like the Scheduler.
// `history` is the one copy of the request's token history on the coordinator: the engine's RequestState
// keeps only what it has delivered (text, counts), replay after a worker loss restarts from it, and
// speculative proposals never enter it (they travel in ScheduledSeq only until verified). It carries the
// n-gram index the ngram proposer searches, kept in step with the tokens.
struct Sequence {
  uint64_t seq_id = 0;
  int priority = 0;          // lower runs first
  uint64_t arrival = 0;      // AddSequence order; with priority, the sequence's seniority
  int prompt_len = 0;
  int max_new_tokens = 0;
  TokenHistory history;  // prompt + generated so far

  SequenceStatus status = SequenceStatus::kWaiting;
  // Tokens whose KV is in this sequence's blocks, [0, num_computed_tokens). Reset to 0 on preemption.
  int num_computed_tokens = 0;
  // Prefill target of the current admission: prompt_len the first time, every token known after a
  // preemption (recompute). The sequence is decoding once num_computed_tokens reaches it.
  int prefill_len = 0;
  std::vector<int32_t> block_table;       // [BlocksFor(num_computed_tokens + tokens in flight)]
  std::vector<BlockHash> block_hashes;    // chained hashes of the history's full blocks, filled lazily
  int num_registered_blocks = 0;          // leading block_table entries already offered to the prefix cache
  int num_cached_tokens = 0;              // tokens served from the prefix cache at the latest admission
  bool needs_start = false;               // next schedule is the first since (re)admission
  bool ever_scheduled = false;            // workers may hold state for it
  int num_preemptions = 0;
  // Speculative decoding (SchedulerConfig::speculative): current proposal length, adapted to acceptance.
  int spec_k = 0;
  double spec_acceptance = 1.0;  // moving average of accepted / proposed
  int spec_num_drafts = 0;       // verify steps that carried proposals
  int spec_resume_at = 0;        // with spec_k == 0: num_generated() at which speculation probes again
  int spec_num_pauses = 0;       // pauses since a proposal was last accepted (backs off early probes)
  std::vector<int32_t> draft_proposals;  // SpeculativeMethod::kDraft: the draft model's, for the next decode

  int num_tokens() const { return history.size(); }
  int num_generated() const { return num_tokens() - prompt_len; }
  // Generated max_new_tokens: waits for the engine's Finish() and is never scheduled again.
  bool reached_max_tokens() const { return num_generated() >= max_new_tokens; }
  bool prefill_done() const { return num_computed_tokens >= prefill_len; }
};

// Seniority order used everywhere: lower priority value first, then earlier arrival. Preemption victims are
// taken from the other end, so an older request keeps its place across preempt/recompute cycles.
inline bool SeniorTo(const Sequence& a, const Sequence& b) {
  if (a.priority != b.priority) return a.priority < b.priority;
  return a.arrival < b.arrival;
}

}  // namespace tpserve::coordinator
