// Scheduler: step-by-step expected-state tables (admission order, budgets, chunked prefill, preemption,
// prefix reuse, eviction, abort, validation) and a seeded randomized soak test checking invariants each step.
#include "coordinator/engine/scheduler.h"

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/coordinator/ngram_scan_reference.h"

namespace tpserve::coordinator {
namespace {

using absl::StatusCode;

// Distinct per sequence, so only prompts built to share a prefix hit the cache.
std::vector<int32_t> Prompt(uint64_t seq, int len) {
  std::vector<int32_t> p(len);
  for (int i = 0; i < len; ++i) p[i] = static_cast<int32_t>(seq * 1000 + i);
  return p;
}
std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

constexpr bool S = true, NoS = false;   // sample
constexpr bool New = true, Old = false;  // is_new

// One scheduled sequence as the table expects it.
struct Ran {
  uint64_t seq;
  int start;
  int num_tokens;
  bool sample;
  bool is_new;
  int cached = -1;  // num_cached_tokens when >= 0
};
struct State {
  int running;
  int waiting;
  int free_blocks;
};
enum class Op { kAdd, kStep, kAbort, kFinish };
struct Row {
  Op op = Op::kStep;
  uint64_t seq = 0;
  std::vector<int32_t> prompt;
  int max_new = 0;
  int priority = 0;
  StatusCode code = StatusCode::kOk;
  std::vector<Ran> ran;
  std::vector<uint64_t> preempted;
  std::vector<std::vector<int32_t>> tables;  // expected block tables per `ran` entry, when given
  State after{};
};

Row Add(uint64_t seq, std::vector<int32_t> prompt, int max_new, int priority, State after,
        StatusCode code = StatusCode::kOk) {
  Row r;
  r.op = Op::kAdd;
  r.seq = seq;
  r.prompt = std::move(prompt);
  r.max_new = max_new;
  r.priority = priority;
  r.code = code;
  r.after = after;
  return r;
}
Row Step(std::vector<Ran> ran, State after, std::vector<uint64_t> preempted = {},
         std::vector<std::vector<int32_t>> tables = {}) {
  Row r;
  r.op = Op::kStep;
  r.ran = std::move(ran);
  r.after = after;
  r.preempted = std::move(preempted);
  r.tables = std::move(tables);
  return r;
}
Row Abort(uint64_t seq, State after) {
  Row r;
  r.op = Op::kAbort;
  r.seq = seq;
  r.after = after;
  return r;
}
Row Finish(uint64_t seq, State after) {
  Row r;
  r.op = Op::kFinish;
  r.seq = seq;
  r.after = after;
  return r;
}

// Plays a table against a Scheduler, keeping its own record of every sequence's tokens (prompt + sampled) as
// the reference for what each step must run. Sampled tokens are made up per sequence and step.
class TableRunner {
 public:
  explicit TableRunner(const SchedulerConfig& config) : sched_(config) {}
  Scheduler& sched() { return sched_; }
  const SchedulerOutput& last() const { return last_; }

  void Run(const std::vector<Row>& rows) {
    for (size_t i = 0; i < rows.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("row ", i));
      Play(rows[i]);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }

 private:
  void Play(const Row& row) {
    switch (row.op) {
      case Op::kAdd: {
        const absl::Status s = sched_.AddSequence(row.seq, row.prompt, row.max_new, row.priority);
        ASSERT_EQ(s.code(), row.code) << s;
        if (s.ok()) tokens_[row.seq] = row.prompt;
        break;
      }
      case Op::kAbort:
        sched_.Abort(row.seq);
        break;
      case Op::kFinish:
        sched_.Finish(row.seq);
        break;
      case Op::kStep:
        PlayStep(row);
        break;
    }
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(sched_.num_running(), row.after.running);
    EXPECT_EQ(sched_.num_waiting(), row.after.waiting);
    EXPECT_EQ(sched_.block_manager().num_free_blocks(), row.after.free_blocks);
    const absl::Status consistent = sched_.block_manager().CheckConsistency(sched_.BlockOwnerCounts());
    EXPECT_TRUE(consistent.ok()) << consistent;
  }

  void PlayStep(const Row& row) {
    last_ = sched_.Schedule();
    const SchedulerOutput& out = last_;
    ASSERT_EQ(out.seqs.size(), row.ran.size()) << "scheduled a different number of sequences";
    EXPECT_EQ(out.preempted, row.preempted);
    int total = 0;
    absl::flat_hash_map<uint64_t, std::vector<int32_t>> sampled;
    const int bs = sched_.config().block_size;
    for (size_t i = 0; i < row.ran.size(); ++i) {
      const ScheduledSeq& got = out.seqs[i];
      const Ran& want = row.ran[i];
      SCOPED_TRACE(absl::StrCat("entry ", i, " seq ", want.seq));
      ASSERT_EQ(got.seq_id, want.seq);
      EXPECT_EQ(got.start_position, want.start);
      ASSERT_EQ(static_cast<int>(got.token_ids.size()), want.num_tokens);
      EXPECT_EQ(got.sample, want.sample);
      EXPECT_EQ(got.is_new, want.is_new);
      if (want.cached >= 0) {
        EXPECT_EQ(got.num_cached_tokens, want.cached);
      }
      const std::vector<int32_t>& ref = tokens_[want.seq];
      ASSERT_LE(want.start + want.num_tokens, static_cast<int>(ref.size()));
      EXPECT_EQ(got.token_ids, std::vector<int32_t>(ref.begin() + want.start,
                                                    ref.begin() + want.start + want.num_tokens));
      EXPECT_EQ(static_cast<int>(got.block_table.size()), (want.start + want.num_tokens + bs - 1) / bs);
      if (!row.tables.empty()) {
        EXPECT_EQ(got.block_table, row.tables[i]);
      }
      total += want.num_tokens;
      if (got.sample) {
        const int32_t tok = static_cast<int32_t>(900000 + want.seq * 100 + ref.size());
        sampled[got.seq_id] = {tok};
      }
    }
    EXPECT_EQ(out.num_batched_tokens, total);
    EXPECT_LE(total, sched_.config().max_num_batched_tokens);
    sched_.OnStepComplete(out, sampled);
    for (const auto& [id, tok] : sampled) tokens_[id].push_back(tok[0]);
  }

  Scheduler sched_;
  std::map<uint64_t, std::vector<int32_t>> tokens_;
  SchedulerOutput last_;
};

SchedulerConfig Config(int num_blocks, int block_size, int max_num_seqs, int budget, int max_model_len) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.max_num_seqs = max_num_seqs;
  c.max_num_batched_tokens = budget;
  c.max_model_len = max_model_len;
  return c;
}

TEST(SchedulerTest, FcfsUnderMaxNumSeqsAndLengthLimit) {
  TableRunner t(Config(/*num_blocks=*/64, /*block_size=*/16, /*max_num_seqs=*/2, /*budget=*/100, 512));
  t.Run({
      Add(1, Prompt(1, 30), 3, 0, {0, 1, 64}),
      Add(2, Prompt(2, 20), 3, 0, {0, 2, 64}),
      Add(3, Prompt(3, 10), 3, 0, {0, 3, 64}),
      // max_num_seqs = 2: seq 3 waits. 30 tokens -> 2 blocks, 20 -> 2 blocks.
      Step({{1, 0, 30, S, New, 0}, {2, 0, 20, S, New, 0}}, {2, 1, 60}),
      Step({{1, 30, 1, S, Old}, {2, 20, 1, S, Old}}, {2, 1, 60}),
      // seq 1's full first block stays cached but counts as free.
      Finish(1, {1, 1, 62}),
      Step({{2, 21, 1, S, Old}, {3, 0, 10, S, New}}, {2, 0, 61}),
      // seq 2 has its 3 tokens: it is not scheduled again, it waits for Finish().
      Step({{3, 10, 1, S, Old}}, {2, 0, 61}),
      Finish(2, {1, 0, 63}),
      Step({{3, 11, 1, S, Old}}, {1, 0, 63}),
      Finish(3, {0, 0, 64}),
  });
  EXPECT_FALSE(t.sched().HasWork());
}

TEST(SchedulerTest, LowerPriorityValueFirstThenArrival) {
  TableRunner t(Config(64, 16, /*max_num_seqs=*/2, 100, 512));
  t.Run({
      Add(1, Prompt(1, 5), 2, /*priority=*/5, {0, 1, 64}),
      Add(2, Prompt(2, 5), 2, 0, {0, 2, 64}),
      Add(3, Prompt(3, 5), 2, 0, {0, 3, 64}),
      Add(4, Prompt(4, 5), 2, -1, {0, 4, 64}),
      Step({{4, 0, 5, S, New}, {2, 0, 5, S, New}}, {2, 2, 62}),
      Step({{4, 5, 1, S, Old}, {2, 5, 1, S, Old}}, {2, 2, 62}),
      // Both generated max_new_tokens and hold their slots until Finish(): nothing runs.
      Step({}, {2, 2, 62}),
      Finish(4, {1, 2, 63}),
      Finish(2, {0, 2, 64}),
      Step({{3, 0, 5, S, New}, {1, 0, 5, S, New}}, {2, 0, 62}),
  });
}

TEST(SchedulerTest, TokenBudgetWithoutChunkingKeepsFcfsOrder) {
  SchedulerConfig c = Config(64, 16, 8, /*budget=*/100, 512);
  c.enable_chunked_prefill = false;
  TableRunner t(c);
  t.Run({
      Add(1, Prompt(1, 60), 4, 0, {0, 1, 64}),
      Add(2, Prompt(2, 60), 4, 0, {0, 2, 64}),
      Add(3, Prompt(3, 10), 4, 0, {0, 3, 64}),
      // 60 + 60 > 100: seq 2 waits, and seq 3 may not jump the queue.
      Step({{1, 0, 60, S, New}}, {1, 2, 60}),
      Step({{1, 60, 1, S, Old}, {2, 0, 60, S, New}, {3, 0, 10, S, New}}, {3, 0, 55}),
  });
}

TEST(SchedulerTest, ChunkedPrefillRunsBesideDecodes) {
  TableRunner t(Config(64, 16, 8, /*budget=*/32, 512));
  t.Run({
      Add(1, Prompt(1, 10), 20, 0, {0, 1, 64}),
      Step({{1, 0, 10, S, New}}, {1, 0, 63}),
      Add(2, Prompt(2, 100), 5, 0, {1, 1, 63}),
      // The decode keeps its token every step; the 100-token prompt takes the other 31.
      Step({{1, 10, 1, S, Old}, {2, 0, 31, NoS, New, 0}}, {2, 0, 61}),
      Step({{1, 11, 1, S, Old}, {2, 31, 31, NoS, Old}}, {2, 0, 59}),
      Step({{1, 12, 1, S, Old}, {2, 62, 31, NoS, Old}}, {2, 0, 57}),
      Step({{1, 13, 1, S, Old}, {2, 93, 7, S, Old}}, {2, 0, 56}),
      Step({{1, 14, 1, S, Old}, {2, 100, 1, S, Old}}, {2, 0, 56}),
      Step({{1, 15, 1, S, Old}, {2, 101, 1, S, Old}}, {2, 0, 56}),
      // seq 1 reaches 17 tokens: a second block.
      Step({{1, 16, 1, S, Old}, {2, 102, 1, S, Old}}, {2, 0, 55}),
  });
}

TEST(SchedulerTest, BlockExhaustionPreemptsJuniorWhichRecomputesAndCompletes) {
  TableRunner t(Config(/*num_blocks=*/6, /*block_size=*/4, 8, 64, 64));
  t.Run({
      Add(1, Prompt(1, 8), 8, 0, {0, 1, 6}),
      Add(2, Prompt(2, 8), 8, 0, {0, 2, 6}),
      Step({{1, 0, 8, S, New}, {2, 0, 8, S, New}}, {2, 0, 2}, {}, {{0, 1}, {2, 3}}),
      Step({{1, 8, 1, S, Old}, {2, 8, 1, S, Old}}, {2, 0, 0}, {}, {{0, 1, 4}, {2, 3, 5}}),
      Step({{1, 9, 1, S, Old}, {2, 9, 1, S, Old}}, {2, 0, 0}),
      Step({{1, 10, 1, S, Old}, {2, 10, 1, S, Old}}, {2, 0, 0}),
      Step({{1, 11, 1, S, Old}, {2, 11, 1, S, Old}}, {2, 0, 0}),
      // seq 1 needs a 4th block: seq 2 (junior) is preempted. Its blocks were full and cached; the tail
      // one (5) is evicted first and handed to seq 1; 2 and 3 stay cached.
      Step({{1, 12, 1, S, Old}}, {1, 1, 2}, {2}, {{0, 1, 4, 5}}),
      // seq 2 (13 tokens) would hit blocks 2,3 but needs 2 more: no room, it keeps waiting.
      Step({{1, 13, 1, S, Old}}, {1, 1, 2}),
      Step({{1, 14, 1, S, Old}}, {1, 1, 2}),
      Finish(1, {0, 1, 6}),
      // Recompute: prompt + its 5 generated tokens, the first 8 from its own cached blocks.
      Step({{2, 8, 5, S, New, 8}}, {1, 0, 2}, {}, {{2, 3, 5, 4}}),
      Step({{2, 13, 1, S, Old}}, {1, 0, 2}),
      Step({{2, 14, 1, S, Old}}, {1, 0, 2}),
      Finish(2, {0, 0, 6}),
  });
  EXPECT_EQ(t.sched().num_preemptions(), 1);
  EXPECT_EQ(t.sched().prefix_cache_stats().queries, 8 + 8 + 13);
  EXPECT_EQ(t.sched().prefix_cache_stats().hits, 8);
}

TEST(SchedulerTest, PreemptionFollowsPriorityNotAdmissionOrder) {
  TableRunner t(Config(/*num_blocks=*/3, /*block_size=*/4, 8, 64, 64));
  t.Run({
      Add(10, Prompt(10, 4), 6, /*priority=*/1, {0, 1, 3}),
      Step({{10, 0, 4, S, New}}, {1, 0, 2}, {}, {{0}}),
      Add(20, Prompt(20, 4), 4, /*priority=*/0, {1, 1, 2}),
      Step({{10, 4, 1, S, Old}, {20, 0, 4, S, New}}, {2, 0, 0}, {}, {{0, 1}, {2}}),
      // The senior-by-priority seq 20 needs a block: seq 10, admitted earlier but junior, yields.
      Step({{20, 4, 1, S, Old}}, {1, 1, 1}, {10}, {{2, 1}}),
      Step({{20, 5, 1, S, Old}}, {1, 1, 1}),
      Step({{20, 6, 1, S, Old}}, {1, 1, 1}),
      Finish(20, {0, 1, 3}),
      Step({{10, 4, 2, S, New, 4}}, {1, 0, 1}, {}, {{0, 1}}),
      Step({{10, 6, 1, S, Old}}, {1, 0, 1}),
      Step({{10, 7, 1, S, Old}}, {1, 0, 1}),
      Step({{10, 8, 1, S, Old}}, {1, 0, 0}, {}, {{0, 1, 2}}),
      Finish(10, {0, 0, 3}),
  });
}

TEST(SchedulerTest, SharedSystemPromptIsReusedFromThePrefixCache) {
  TableRunner t(Config(32, 16, 8, 256, 256));
  const std::vector<int32_t> system = Prompt(3, 48);  // 3 full blocks
  const std::vector<int32_t> a = Concat(system, Prompt(4, 10));
  const std::vector<int32_t> b = Concat(system, Prompt(5, 7));
  t.Run({
      Add(1, a, 4, 0, {0, 1, 32}),
      Step({{1, 0, 58, S, New, 0}}, {1, 0, 28}),
      Add(2, b, 4, 0, {1, 1, 28}),
      // 48 tokens come from seq 1's blocks: only the 7-token suffix runs, in 1 new block.
      Step({{1, 58, 1, S, Old}, {2, 48, 7, S, New, 48}}, {2, 0, 27}),
  });
  const SchedulerOutput& out = t.last();
  ASSERT_EQ(out.seqs.size(), 2u);
  const std::vector<int32_t>& ta = out.seqs[0].block_table;
  const std::vector<int32_t>& tb = out.seqs[1].block_table;
  ASSERT_EQ(tb.size(), 4u);
  EXPECT_EQ(std::vector<int32_t>(ta.begin(), ta.begin() + 3), std::vector<int32_t>(tb.begin(), tb.begin() + 3));
  EXPECT_NE(ta[3], tb[3]);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.sched().block_manager().ref_count(tb[i]), 2);
  EXPECT_EQ(t.sched().prefix_cache_stats().queries, 58 + 55);
  EXPECT_EQ(t.sched().prefix_cache_stats().hits, 48);

  t.Run({
      Finish(1, {1, 0, 28}),  // shared blocks still held by seq 2
      Finish(2, {0, 0, 32}),
      // A prompt that is exactly the cached 48 tokens: the block holding its last token must run.
      Add(3, system, 4, 0, {0, 1, 32}),
      Step({{3, 32, 16, S, New, 32}}, {1, 0, 29}),
      Finish(3, {0, 0, 32}),
  });
  EXPECT_EQ(t.sched().prefix_cache_stats().queries, 58 + 55 + 48);
  EXPECT_EQ(t.sched().prefix_cache_stats().hits, 48 + 32);
  // Only the 3 system blocks were ever full; seq 3's copy of the third one duplicates a cached block.
  EXPECT_EQ(t.sched().block_manager().num_cached_blocks(), 3);
}

TEST(SchedulerTest, CachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  TableRunner t(Config(/*num_blocks=*/4, /*block_size=*/4, 8, 64, 16));
  const std::vector<int32_t> p1 = Prompt(1, 8), p2 = Prompt(2, 8), p3 = Prompt(3, 8);
  t.Run({
      Add(1, p1, 1, 0, {0, 1, 4}),
      Step({{1, 0, 8, S, New}}, {1, 0, 2}, {}, {{0, 1}}),
      Finish(1, {0, 0, 4}),
      Add(2, p2, 1, 0, {0, 1, 4}),
      Step({{2, 0, 8, S, New, 0}}, {1, 0, 2}, {}, {{2, 3}}),  // never-used blocks before cached ones
      Finish(2, {0, 0, 4}),
      Add(3, p3, 1, 0, {0, 1, 4}),
      // Evicts p1's blocks (least recently used), tail first.
      Step({{3, 0, 8, S, New, 0}}, {1, 0, 2}, {}, {{1, 0}}),
      Finish(3, {0, 0, 4}),
      // p2 is still cached: 8 tokens hit; the 9th needs a block, which evicts p3's tail (0).
      Add(4, Concat(p2, {77}), 1, 0, {0, 1, 4}),
      Step({{4, 8, 1, S, New, 8}}, {1, 0, 1}, {}, {{2, 3, 0}}),
      Finish(4, {0, 0, 4}),
      // p1 was evicted: nothing to reuse.
      Add(5, Concat(p1, {77}), 1, 0, {0, 1, 4}),
      Step({{5, 0, 9, S, New, 0}}, {1, 0, 1}, {}, {{0, 1, 3}}),
      Finish(5, {0, 0, 4}),
  });
}

TEST(SchedulerTest, ClearPrefixCacheAfterWorkerLossForcesRecompute) {
  TableRunner t(Config(8, 4, 8, 64, 64));
  t.Run({
      Add(1, Prompt(1, 9), 2, 0, {0, 1, 8}),
      Step({{1, 0, 9, S, New, 0}}, {1, 0, 5}),
      Abort(1, {0, 0, 8}),  // the engine aborts everything, clears, and replays from token history
  });
  EXPECT_EQ(t.sched().block_manager().num_cached_blocks(), 2);
  t.sched().ClearPrefixCache();
  EXPECT_EQ(t.sched().block_manager().num_cached_blocks(), 0);
  t.Run({
      Add(2, Prompt(1, 9), 2, 0, {0, 1, 8}),
      Step({{2, 0, 9, S, New, 0}}, {1, 0, 5}),
  });
}

TEST(SchedulerTest, AbortReturnsEveryBlockWhereverTheSequenceIs) {
  TableRunner t(Config(6, 4, 8, 64, 64));
  t.Run({
      Add(1, Prompt(1, 8), 8, 0, {0, 1, 6}),
      Add(2, Prompt(2, 8), 8, 0, {0, 2, 6}),
      Step({{1, 0, 8, S, New}, {2, 0, 8, S, New}}, {2, 0, 2}),
      Step({{1, 8, 1, S, Old}, {2, 8, 1, S, Old}}, {2, 0, 0}),
      Add(3, Prompt(3, 4), 2, 0, {2, 1, 0}),
      Step({{1, 9, 1, S, Old}, {2, 9, 1, S, Old}}, {2, 1, 0}),  // no block for seq 3
      Step({{1, 10, 1, S, Old}, {2, 10, 1, S, Old}}, {2, 1, 0}),
      Step({{1, 11, 1, S, Old}, {2, 11, 1, S, Old}}, {2, 1, 0}),
      Step({{1, 12, 1, S, Old}}, {1, 2, 2}, {2}),
      Abort(3, {1, 1, 2}),  // waiting, never ran
      Abort(2, {1, 0, 2}),  // preempted
      Abort(1, {0, 0, 6}),  // running
      Abort(1, {0, 0, 6}),  // idempotent
      Finish(99, {0, 0, 6}),
      Step({}, {0, 0, 6}),
  });
  // Workers held state for 2 and 1 only.
  EXPECT_EQ(t.last().finished, (std::vector<uint64_t>{2, 1}));
  EXPECT_FALSE(t.sched().HasWork());
}

TEST(SchedulerTest, AbortDuringAStepIsIgnoredOnCompletion) {
  Scheduler s(Config(8, 4, 8, 64, 64));
  ASSERT_TRUE(s.AddSequence(1, Prompt(1, 6), 4, 0).ok());
  ASSERT_TRUE(s.AddSequence(2, Prompt(2, 6), 4, 0).ok());
  SchedulerOutput out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  s.Abort(1);
  s.OnStepComplete(out, {{1, {5}}, {2, {6}}});
  EXPECT_EQ(s.sequence(1), nullptr);
  ASSERT_NE(s.sequence(2), nullptr);
  EXPECT_EQ(s.sequence(2)->num_tokens(), 7);
  EXPECT_EQ(s.sequence(2)->num_computed_tokens, 6);
  s.Finish(2);
  EXPECT_EQ(s.block_manager().num_free_blocks(), 8);
  EXPECT_EQ(s.Schedule().finished, (std::vector<uint64_t>{1, 2}));
}

TEST(SchedulerTest, QueuesEverySequenceAndAdmitsInArrivalOrder) {
  // The queue limit is the engine's (new requests only): after a worker loss every in-flight request (up to
  // max_num_seqs running + max_queued_requests waiting) comes back at once; none may be refused, and they keep
  // their order.
  SchedulerConfig c = Config(64, 16, 8, 100, 512);
  c.max_num_seqs = 2;
  Scheduler s(c);
  for (uint64_t id = 1; id <= 40; ++id) ASSERT_TRUE(s.AddSequence(id, Prompt(id, 4), 2, 0).ok()) << id;
  EXPECT_EQ(s.num_waiting(), 40);
  const SchedulerOutput out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(out.seqs[0].seq_id, 1u);
  EXPECT_EQ(out.seqs[1].seq_id, 2u);
}

TEST(SchedulerTest, RejectsRequestsThatCanNeverRun) {
  Scheduler s(Config(/*num_blocks=*/4, /*block_size=*/4, 8, 64, /*max_model_len=*/32));
  auto expect = [&](absl::Status st, StatusCode code, const std::string& mentions) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(st.message().find(mentions), std::string::npos) << st;
  };
  expect(s.AddSequence(1, {}, 4, 0), StatusCode::kInvalidArgument, "prompt_ids is empty");
  expect(s.AddSequence(1, {5, -3}, 4, 0), StatusCode::kInvalidArgument, "prompt_ids[1]");
  expect(s.AddSequence(1, Prompt(1, 4), 0, 0), StatusCode::kInvalidArgument, "max_new_tokens");
  expect(s.AddSequence(1, Prompt(1, 30), 3, 0), StatusCode::kInvalidArgument, "max_model_len 32");
  // 16 + 2 tokens: 17 KV slots = 5 blocks > the pool's 4.
  expect(s.AddSequence(1, Prompt(1, 16), 2, 0), StatusCode::kInvalidArgument, "num_blocks = 4");
  EXPECT_EQ(s.num_waiting(), 0);
  EXPECT_TRUE(s.AddSequence(1, Prompt(1, 16), 1, 0).ok());  // exactly the pool
  expect(s.AddSequence(1, Prompt(1, 4), 1, 0), StatusCode::kAlreadyExists, "seq 1");

  SchedulerConfig no_chunk = Config(64, 4, 8, /*budget=*/8, 64);
  no_chunk.enable_chunked_prefill = false;
  Scheduler nc(no_chunk);
  EXPECT_TRUE(nc.AddSequence(1, Prompt(1, 8), 1, 0).ok());
  expect(nc.AddSequence(2, Prompt(2, 8), 2, 0), StatusCode::kInvalidArgument, "max_num_batched_tokens");

  expect(Scheduler::Create(Config(0, 16, 8, 64, 64)).status(), StatusCode::kInvalidArgument, "num_blocks");
  expect(Scheduler::Create(Config(8, 16, 8, 64, 0)).status(), StatusCode::kInvalidArgument, "max_model_len");
  expect(Scheduler::Create(Config(8, 16, 0, 64, 64)).status(), StatusCode::kInvalidArgument, "max_num_seqs");
  EXPECT_TRUE(Scheduler::Create(Config(8, 16, 8, 64, 64)).ok());
}

// ---------------------------------------------------------------------------------------------------------
// Randomized soak: a fake engine drives the scheduler with random arrivals, shared prefixes, EOS and aborts,
// and keeps an independent model of what every KV slot holds (a fingerprint of the whole token prefix that
// produced it), so any wrong reuse, overwrite of a shared block, or stale position shows up as a mismatch.

struct SoakCase {
  uint32_t seed;
  SchedulerConfig config;
  int num_requests;
  int max_prompt;
  int max_new;
  bool expect_preemptions;
  int max_waiting = 1024;  // the engine's queue limit for new requests (EngineOptions.max_queued_requests)
  int vocab = 500;  // random tokens in [0, vocab); small ones make n-grams recur (speculation)
  int replay_one_in = 0;  // > 0: before a step, with probability 1 / replay_one_in, the worker group is lost
};

// FNV-1a over the prefix, independent of the scheduler's block hash.
std::vector<uint64_t> PrefixFingerprints(const std::vector<int32_t>& tokens) {
  std::vector<uint64_t> f(tokens.size());
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < tokens.size(); ++i) {
    h = (h ^ static_cast<uint32_t>(tokens[i])) * 1099511628211ULL;
    f[i] = h;
  }
  return f;
}

void RunSoak(const SoakCase& c) {
  SCOPED_TRACE(absl::StrCat("seed ", c.seed));
  Scheduler s(c.config);
  const int bs = c.config.block_size;
  std::mt19937 rng(c.seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<std::vector<int32_t>> prefixes;
  for (int len : {2 * bs, 3 * bs + 1, 5}) {
    std::vector<int32_t> p(len);
    for (int32_t& t : p) t = uniform(0, c.vocab - 1);
    prefixes.push_back(p);
  }
  struct Req {
    std::vector<int32_t> tokens;
    int prompt_len;
    int max_new;
    int computed = 0;
  };
  std::map<uint64_t, Req> live;
  std::vector<std::vector<uint64_t>> kv(c.config.num_blocks, std::vector<uint64_t>(bs, 0));
  int added = 0, resolved = 0;
  int64_t num_draft_tokens = 0;
  uint64_t next_id = 1;
  const int kMaxSteps = 50000;
  int step = 0;
  for (; step < kMaxSteps && (added < c.num_requests || s.HasWork()); ++step) {
    for (int k = uniform(0, 2); k > 0 && added < c.num_requests; --k) {
      std::vector<int32_t> prompt;
      if (uniform(0, 1)) prompt = prefixes[uniform(0, 2)];
      const int extra = uniform(prompt.empty() ? 1 : 0, c.max_prompt - static_cast<int>(prompt.size()));
      for (int i = 0; i < extra; ++i) prompt.push_back(uniform(0, c.vocab - 1));
      const int max_new = uniform(1, c.max_new);
      if (s.num_waiting() >= c.max_waiting) break;  // the engine refuses it: the client retries later
      const absl::Status st = s.AddSequence(next_id, prompt, max_new, uniform(0, 2));
      ASSERT_TRUE(st.ok()) << st;
      live[next_id] = Req{prompt, static_cast<int>(prompt.size()), max_new};
      ++next_id;
      ++added;
    }
    if (!live.empty() && uniform(0, 40) == 0) {
      auto it = std::next(live.begin(), uniform(0, static_cast<int>(live.size()) - 1));
      s.Abort(it->first);
      live.erase(it);
      ++resolved;
    }

    if (c.replay_one_in > 0 && uniform(1, c.replay_one_in) == 1) {
      s.RequeueAllForReplay();  // every KV is gone: each sequence recomputes from its history
      for (auto& [id, q] : live) q.computed = 0;
    }

    const SchedulerOutput out = s.Schedule();
    ASSERT_LE(static_cast<int>(out.seqs.size()), c.config.max_num_seqs);
    ASSERT_LE(out.num_batched_tokens, c.config.max_num_batched_tokens);
    for (uint64_t id : out.preempted) live.at(id).computed = 0;
    int total = 0;
    absl::flat_hash_map<uint64_t, std::vector<int32_t>> sampled;
    absl::flat_hash_map<int32_t, uint64_t> writer;  // block -> seq writing it this step
    int64_t drafts_this_step = 0;
    for (const ScheduledSeq& r : out.seqs) {
      SCOPED_TRACE(absl::StrCat("step ", step, " seq ", r.seq_id));
      Req& q = live.at(r.seq_id);
      const int n = static_cast<int>(r.token_ids.size()) - r.num_draft_tokens;  // known tokens
      const int d = r.num_draft_tokens;
      ASSERT_GT(n, 0);
      ASSERT_GE(d, 0);
      if (d > 0) {
        // Proposals follow a sampling step's last token, fit the request's max_new and the flag's k, and are
        // what the n-gram proposer finds in the known tokens.
        ASSERT_TRUE(r.sample);
        ASSERT_LE(d, c.config.speculative.num_speculative_tokens);
        ASSERT_LE(static_cast<int>(q.tokens.size()) - q.prompt_len + d + 1, q.max_new);
        const std::vector<int32_t> want = ngram_reference::ScanNgramProposal(c.config.speculative.ngram, q.tokens, d);
        ASSERT_EQ(std::vector<int32_t>(r.token_ids.end() - d, r.token_ids.end()), want);
        drafts_this_step += d;
      }
      if (r.is_new) {
        ASSERT_EQ(r.start_position, r.num_cached_tokens);
        ASSERT_EQ(r.start_position % bs, 0);
        ASSERT_LT(r.start_position, static_cast<int>(q.tokens.size()));  // the last token always runs
        if (!c.config.enable_prefix_caching) {
          ASSERT_EQ(r.start_position, 0);
        }
      } else {
        ASSERT_EQ(r.start_position, q.computed);
      }
      ASSERT_EQ(r.start_position + n <= static_cast<int>(q.tokens.size()), true);
      ASSERT_EQ(std::vector<int32_t>(r.token_ids.begin(), r.token_ids.begin() + n),
                std::vector<int32_t>(q.tokens.begin() + r.start_position, q.tokens.begin() + r.start_position + n));
      ASSERT_EQ(static_cast<int>(r.block_table.size()), (r.start_position + n + d + bs - 1) / bs);
      ASSERT_EQ(r.sample, r.start_position + n == static_cast<int>(q.tokens.size()));
      // What this step writes: the known tokens, then the proposals (whose KV is right only if accepted).
      std::vector<int32_t> run_tokens(q.tokens.begin(), q.tokens.begin() + r.start_position);
      run_tokens.insert(run_tokens.end(), r.token_ids.begin(), r.token_ids.end());
      const std::vector<uint64_t> fp = PrefixFingerprints(run_tokens);
      for (int p = 0; p < r.start_position; ++p) {  // attention reads these: they must be ours
        ASSERT_EQ(kv[r.block_table[p / bs]][p % bs], fp[p]) << "position " << p;
      }
      for (int p = r.start_position; p < r.start_position + n + d; ++p) {
        const int32_t b = r.block_table[p / bs];
        ASSERT_EQ(s.block_manager().ref_count(b), 1) << "writing into shared block " << b;
        auto [it, fresh] = writer.emplace(b, r.seq_id);
        ASSERT_TRUE(fresh || it->second == r.seq_id) << "two sequences write block " << b;
        kv[b][p % bs] = fp[p];
      }
      q.computed = r.start_position + n;
      total += n + d;
      if (r.sample) {
        // The model agrees with each proposal with probability 2/3 until it first disagrees; its own token
        // follows. Token 2 plays EOS now and then; otherwise any vocab id.
        std::vector<int32_t> got;
        for (int i = 0; i < d && uniform(0, 2) > 0; ++i) got.push_back(r.token_ids[n + i]);
        int32_t own = uniform(0, 30) == 0 ? 2 : uniform(3, std::max(3, c.vocab - 1));
        const int a = static_cast<int>(got.size());
        if (a < d && own == r.token_ids[n + a]) own = own == 3 ? 4 : 3;  // a disagreement really differs
        got.push_back(own);
        q.computed += a;
        sampled[r.seq_id] = got;
      }
    }
    ASSERT_EQ(out.num_batched_tokens, total);
    s.OnStepComplete(out, sampled);
    num_draft_tokens += drafts_this_step;
    for (const auto& [id, got] : sampled) {
      Req& q = live.at(id);
      q.tokens.insert(q.tokens.end(), got.begin(), got.end());
      const int generated = static_cast<int>(q.tokens.size()) - q.prompt_len;
      const Sequence* seq = s.sequence(id);
      ASSERT_EQ(seq->history.tokens(), q.tokens);
      ASSERT_EQ(seq->num_computed_tokens, q.computed);
      // Rollback: no block is held past the computed tokens.
      ASSERT_EQ(static_cast<int>(seq->block_table.size()), (q.computed + bs - 1) / bs);
      ASSERT_LE(generated, q.max_new);
      if (std::find(got.begin(), got.end(), 2) != got.end() || generated >= q.max_new) {
        s.Finish(id);
        live.erase(id);
        ++resolved;
      }
    }
    if (c.config.speculative.num_speculative_tokens > 0) {
      // Each sequence's n-gram index, kept across rollback, preemption and replay, answers as the scan does
      // (a step without proposals does not show it: blocks or the budget may have dropped them).
      for (const auto& [id, q] : live) {
        const TokenHistory& h = s.sequence(id)->history;
        ASSERT_EQ(h.ProposeNgram(8), ngram_reference::ScanNgramProposal(c.config.speculative.ngram, q.tokens, 8));
        const int n = c.config.speculative.ngram.ngram_max;
        ASSERT_EQ(h.LongestNgramRecurs(), !ngram_reference::ScanNgramProposal({n, n}, q.tokens, 1).empty());
      }
    }
    const BlockManager& bm = s.block_manager();
    const absl::Status consistent = bm.CheckConsistency(s.BlockOwnerCounts());
    ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
    ASSERT_EQ(bm.num_free_blocks() + bm.num_used_blocks(), bm.num_blocks());
    ASSERT_EQ(s.num_running() + s.num_waiting(), static_cast<int>(live.size()));
  }
  EXPECT_LT(step, kMaxSteps) << "requests did not all finish: livelock or starvation";
  EXPECT_EQ(added, c.num_requests);
  EXPECT_EQ(resolved, c.num_requests);
  EXPECT_FALSE(s.HasWork());
  EXPECT_EQ(s.block_manager().num_free_blocks(), c.config.num_blocks);
  if (c.expect_preemptions) {
    EXPECT_GT(s.num_preemptions(), 0);
  }
  if (c.config.enable_prefix_caching) {
    EXPECT_GT(s.prefix_cache_stats().hits, 0);
  }
  if (c.config.speculative.num_speculative_tokens > 0) {
    EXPECT_GT(num_draft_tokens, 0);
  }
}

TEST(SchedulerSoakTest, InvariantsHoldAndEveryRequestFinishes) {
  {
    SchedulerConfig cfg = Config(/*num_blocks=*/40, /*block_size=*/8, /*max_num_seqs=*/16, 64, 160);
    RunSoak({1, cfg, 300, 100, 50, true, /*max_waiting=*/24});
  }
  {
    SchedulerConfig cfg = Config(24, 4, 8, 32, 96);
    RunSoak({2, cfg, 300, 60, 30, true});
  }
  {
    SchedulerConfig cfg = Config(50, 3, 4, 16, 120);  // odd block size, tiny budget
    RunSoak({3, cfg, 200, 80, 40, true});
  }
  {
    SchedulerConfig cfg = Config(20, 16, 32, 200, 200);
    cfg.enable_chunked_prefill = false;
    cfg.enable_prefix_caching = false;
    RunSoak({4, cfg, 200, 120, 60, true});
  }
}

}  // namespace
}  // namespace tpserve::coordinator

namespace tpserve::coordinator {
namespace {

// Speculation under the same soak: proposals (the scheduler's n-gram proposer over a 12-token vocabulary, so
// n-grams recur), random acceptance, rollback of the rejected positions' blocks, preemption, prefix reuse and
// (first case) replays after a lost worker group together; every sequence's n-gram index is checked against
// the plain scan after each step. The KV fingerprints catch a rejected proposal's KV that is kept, and a block released while a
// prefix still needs it; the consistency check catches refcounts that drift.
TEST(SchedulerSoakTest, SpeculationKeepsInvariantsAndRollsBackRejectedKv) {
  for (int k : {1, 4, 8}) {
    SCOPED_TRACE(absl::StrCat("k = ", k));
    {
      SchedulerConfig cfg = Config(/*num_blocks=*/40, /*block_size=*/8, /*max_num_seqs=*/16, 64, 160);
      cfg.speculative.num_speculative_tokens = k;
      cfg.speculative.ngram = {1, 3};
      RunSoak({static_cast<uint32_t>(10 + k), cfg, 200, 60, 60, true, /*max_waiting=*/1024, /*vocab=*/12,
               /*replay_one_in=*/150});
    }
    {
      SchedulerConfig cfg = Config(50, 3, 4, 16, 120);  // odd block size, tiny budget
      cfg.speculative.num_speculative_tokens = k;
      cfg.speculative.ngram = {2, 4};
      RunSoak({static_cast<uint32_t>(20 + k), cfg, 150, 60, 40, true, /*max_waiting=*/1024, /*vocab=*/12});
    }
  }
}

}  // namespace
}  // namespace tpserve::coordinator

namespace tpserve::coordinator {
namespace {

// One verify step by hand: the proposal, its place in the step, the accepted prefix kept with the model's own
// token, and the block of the rejected positions given back.
TEST(SchedulerTest, SpeculativeStepVerifiesProposalsAndRollsBackTheRest) {
  SchedulerConfig cfg = Config(/*num_blocks=*/8, /*block_size=*/4, /*max_num_seqs=*/4, /*budget=*/64, 64);
  cfg.speculative.num_speculative_tokens = 3;
  cfg.speculative.ngram = {1, 2};
  Scheduler s(cfg);
  ASSERT_TRUE(s.AddSequence(1, {5, 6, 7, 5, 6}, 10, 0).ok());
  SchedulerOutput out = s.Schedule();  // prefill: no proposals
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 0);
  s.OnStepComplete(out, {{1, {7}}});  // 5 6 7 5 6 | 7

  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  const ScheduledSeq& v = out.seqs[0];
  // "6 7" occurred at positions 1-2, followed by 5 6 7: the last token then three proposals.
  EXPECT_EQ(v.token_ids, (std::vector<int32_t>{7, 5, 6, 7}));
  EXPECT_EQ(v.num_draft_tokens, 3);
  EXPECT_EQ(v.start_position, 5);
  EXPECT_TRUE(v.sample);
  EXPECT_EQ(out.num_batched_tokens, 4);
  EXPECT_EQ(v.block_table.size(), 3u);  // positions 0-8
  EXPECT_EQ(s.block_manager().num_free_blocks(), 5);

  // The model agrees with "5", then says 9 where "6" was proposed.
  s.OnStepComplete(out, {{1, {5, 9}}});
  const Sequence* seq = s.sequence(1);
  EXPECT_EQ(seq->history.tokens(), (std::vector<int32_t>{5, 6, 7, 5, 6, 7, 5, 9}));
  EXPECT_EQ(seq->num_computed_tokens, 7);
  EXPECT_EQ(seq->block_table.size(), 2u);
  EXPECT_EQ(s.block_manager().num_free_blocks(), 6);
  EXPECT_TRUE(s.block_manager().CheckConsistency(s.BlockOwnerCounts()).ok());

  // Next step starts at the first unverified position.
  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].start_position, 7);
  EXPECT_EQ(out.seqs[0].token_ids[0], 9);
}

// Draft-model speculation: a step where a sequence samples asks rank 0 for proposals (num_proposals), those
// that come back for the history they continue become the next decode's verify tokens, trimmed to the
// adapted k and max_new_tokens; proposals for a history that moved on are dropped.
TEST(SchedulerTest, SpeculativeDraftProposalsComeFromTheStepResult) {
  SchedulerConfig cfg = Config(/*num_blocks=*/8, /*block_size=*/4, /*max_num_seqs=*/4, /*budget=*/64, 64);
  cfg.speculative.num_speculative_tokens = 3;
  cfg.speculative.method = SpeculativeMethod::kDraft;
  Scheduler s(cfg);
  ASSERT_TRUE(s.AddSequence(1, {5, 6, 7}, 6, 0).ok());
  SchedulerOutput out = s.Schedule();  // prefill: it samples, so it asks for proposals
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 0);
  EXPECT_EQ(out.seqs[0].num_proposals, 3);
  s.OnStepComplete(out, {{1, {8}}});  // 5 6 7 | 8
  s.SetDraftProposals(1, 3, {1, 2, 3});  // for a history of 3 tokens: stale, dropped
  s.SetDraftProposals(2, 4, {1, 2, 3});  // unknown sequence: ignored
  s.SetDraftProposals(1, 4, {9, 10, 11, 12});  // more than k: trimmed

  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].token_ids, (std::vector<int32_t>{8, 9, 10, 11}));
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 3);
  // One token generated, at most 3 more after this step, minus the model's own: 6 - 1 - 2 = 3.
  EXPECT_EQ(out.seqs[0].num_proposals, 3);
  s.OnStepComplete(out, {{1, {9, 4}}});  // 9 accepted, 4 instead of 10
  EXPECT_EQ(s.sequence(1)->history.tokens(), (std::vector<int32_t>{5, 6, 7, 8, 9, 4}));
  EXPECT_TRUE(s.block_manager().CheckConsistency(s.BlockOwnerCounts()).ok());

  // No proposals arrived: a plain decode, which asks again within max_new_tokens (6 - 3 - 2 = 1).
  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].token_ids, (std::vector<int32_t>{4}));
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 0);
  EXPECT_EQ(out.seqs[0].num_proposals, 1);
  s.OnStepComplete(out, {{1, {3}}});
  s.SetDraftProposals(1, 7, {5, 6});
  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].token_ids, (std::vector<int32_t>{3, 5}));  // 6 - 4 - 1 = 1 proposal may be kept
  EXPECT_EQ(out.seqs[0].num_proposals, 0);  // the step after this one generates the last token
}

// A request that opted out (GenerateRequest.no_speculation) never proposes, nor asks the draft, while another
// in the same steps does.
TEST(SchedulerTest, SpeculationOptOutIsPerSequence) {
  for (SpeculativeMethod method : {SpeculativeMethod::kNgram, SpeculativeMethod::kDraft}) {
    SchedulerConfig cfg = Config(/*num_blocks=*/16, /*block_size=*/4, /*max_num_seqs=*/4, /*budget=*/64, 64);
    cfg.speculative.num_speculative_tokens = 2;
    cfg.speculative.method = method;
    cfg.speculative.ngram = {1, 1};
    Scheduler s(cfg);
    ASSERT_TRUE(s.AddSequence(1, {5, 5, 5}, 10, 0).ok());
    ASSERT_TRUE(s.AddSequence(2, {5, 5, 5}, 10, 0).ok());
    s.DisableSpeculation(2);
    s.DisableSpeculation(3);  // unknown: ignored
    SchedulerOutput out = s.Schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.seqs[0].num_proposals, method == SpeculativeMethod::kDraft ? 2 : 0);
    EXPECT_EQ(out.seqs[1].num_proposals, 0);
    s.OnStepComplete(out, {{1, {5}}, {2, {5}}});
    s.SetDraftProposals(1, 4, {5, 5});
    s.SetDraftProposals(2, 4, {5, 5});
    out = s.Schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.seqs[0].num_draft_tokens, 2);  // ngram: "5" recurs; draft: the proposals above
    EXPECT_EQ(out.seqs[1].num_draft_tokens, 0);
    EXPECT_EQ(out.seqs[1].token_ids, (std::vector<int32_t>{5}));
  }
}

// Proposals stay within max_new_tokens (each kept one is a generated token, plus the model's own) and within
// the step's token budget, and never preempt another sequence.
TEST(SchedulerTest, SpeculationRespectsMaxNewTokensBudgetAndFreeBlocks) {
  SchedulerConfig cfg = Config(/*num_blocks=*/8, /*block_size=*/4, /*max_num_seqs=*/4, /*budget=*/64, 64);
  cfg.speculative.num_speculative_tokens = 8;
  Scheduler s(cfg);
  ASSERT_TRUE(s.AddSequence(1, {3, 3, 3, 3, 3}, 4, 0).ok());
  SchedulerOutput out = s.Schedule();
  s.OnStepComplete(out, {{1, {3}}});  // 1 generated; 3 more allowed: the model's own + 2 proposals
  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 2);
  s.OnStepComplete(out, {{1, {3, 3, 3}}});
  EXPECT_EQ(s.sequence(1)->num_generated(), 4);
  EXPECT_TRUE(s.sequence(1)->reached_max_tokens());
  EXPECT_TRUE(s.Schedule().seqs.empty());

  // Budget: 2 tokens per step leaves room for one proposal.
  SchedulerConfig tight = Config(8, 4, 4, /*budget=*/2, 64);
  tight.speculative.num_speculative_tokens = 8;
  Scheduler t(tight);
  ASSERT_TRUE(t.AddSequence(1, {3, 3}, 20, 0).ok());
  out = t.Schedule();
  t.OnStepComplete(out, {{1, {3}}});
  out = t.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 1);
  EXPECT_LE(out.num_batched_tokens, 2);

  // Blocks: with the pool full, proposals are dropped instead of preempting the other sequence.
  SchedulerConfig small = Config(/*num_blocks=*/2, /*block_size=*/4, 4, 64, 64);
  small.speculative.num_speculative_tokens = 8;
  Scheduler u(small);
  ASSERT_TRUE(u.AddSequence(1, {3, 3, 3}, 4, 0).ok());
  ASSERT_TRUE(u.AddSequence(2, {4, 4, 4}, 4, 1).ok());
  out = u.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  u.OnStepComplete(out, {{1, {3}}, {2, {4}}});  // each holds 1 block with 4 tokens known, 3 computed
  out = u.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_TRUE(out.preempted.empty());
  EXPECT_EQ(out.seqs[0].num_draft_tokens, 0);
  EXPECT_EQ(out.seqs[1].num_draft_tokens, 0);
}

// Adaptivity: a sequence whose proposals are always wrong stops proposing after 8 verify steps, for 64
// generated tokens, then probes again with one proposal.
TEST(SchedulerTest, SpeculationPausesForASequenceThatRejectsEverything) {
  SchedulerConfig cfg = Config(/*num_blocks=*/64, /*block_size=*/4, 4, 64, 256);
  cfg.speculative.num_speculative_tokens = 4;
  Scheduler s(cfg);
  ASSERT_TRUE(s.AddSequence(1, {3, 4, 3, 4, 3, 4}, 200, 0).ok());
  std::vector<int> draft_at;  // num_generated when a step carried proposals, and how many
  std::vector<int> draft_len;
  for (int step = 0; step < 150 && !s.sequence(1)->reached_max_tokens(); ++step) {
    SchedulerOutput out = s.Schedule();
    ASSERT_EQ(out.seqs.size(), 1u);
    const ScheduledSeq& r = out.seqs[0];
    int32_t answer = 3;
    if (r.num_draft_tokens > 0) {
      draft_at.push_back(s.sequence(1)->num_generated());
      draft_len.push_back(r.num_draft_tokens);
      answer = r.token_ids[r.token_ids.size() - r.num_draft_tokens] == 3 ? 4 : 3;  // always disagree
    }
    s.OnStepComplete(out, {{1, {answer}}});
  }
  // 8 rejected proposals, then a pause. The text repeats (3 4 3 4), so its last 4 tokens always occurred before
  // and a paused sequence may probe early, but each rejected probe pauses again at once and the next early probe
  // waits twice as long (2, 4, 8, ... up to the full 64-token pause): O(log) probes per pause, one token each.
  ASSERT_GT(draft_at.size(), 10u);
  for (size_t i = 8; i < draft_at.size(); ++i) {
    EXPECT_GE(draft_at[i] - draft_at[i - 1], std::min(64, 1 << (i - 7))) << "probe " << i;
    EXPECT_EQ(draft_len[i], 1) << "a probe after a pause proposes one token";
  }
  EXPECT_LE(draft_at.size(), 8u + 8u) << "early probes did not back off";
  EXPECT_TRUE(s.block_manager().CheckConsistency(s.BlockOwnerCounts()).ok());
}

TEST(SchedulerTest, SpeculativeConfigIsValidated) {
  SchedulerConfig cfg = Config(8, 4, 4, 64, 64);
  cfg.speculative.num_speculative_tokens = 17;
  EXPECT_EQ(Scheduler::Create(cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.speculative.num_speculative_tokens = 4;
  cfg.speculative.ngram = {3, 2};
  EXPECT_EQ(Scheduler::Create(cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.speculative.ngram = {0, 2};
  EXPECT_EQ(Scheduler::Create(cfg).status().code(), StatusCode::kInvalidArgument);
  cfg.speculative.ngram = {1, 2};
  EXPECT_TRUE(Scheduler::Create(cfg).ok());
}

// One function owns the speculative flags' rules and messages; the CLI asks it with min_tokens 1 (a method was
// named), a SchedulerConfig with 0 (off).
TEST(SchedulerTest, SpeculativeFlagRulesHaveOneOwner) {
  SpeculativeConfig c;
  c.num_speculative_tokens = 0;
  EXPECT_TRUE(ValidateSpeculativeConfig(c, 0).ok());
  EXPECT_EQ(ValidateSpeculativeConfig(c, 1).message(), "--num-speculative-tokens = 0 must be in [1, 16]");
  c.num_speculative_tokens = 17;
  EXPECT_EQ(ValidateSpeculativeConfig(c, 0).message(), "--num-speculative-tokens = 17 must be in [0, 16]");
  c.num_speculative_tokens = 4;
  c.step_tokens = -1;
  EXPECT_EQ(ValidateSpeculativeConfig(c, 1).message(),
            "--speculative-step-tokens = -1 must be >= 0 (0 = no batch-size cap)");
  SchedulerConfig cfg = Config(8, 4, 4, 64, 64);
  cfg.speculative = c;
  EXPECT_EQ(Scheduler::Create(cfg).status().message(), ValidateSpeculativeConfig(c, 0).message());
  c.step_tokens = 0;
  c.ngram = {2, 1};
  EXPECT_EQ(ValidateSpeculativeConfig(c, 1).message(), "--ngram-max = 1 must be >= --ngram-min = 2");
}

// Choosing k from the batch size (--speculative-step-tokens N): B running sequences get at most N / B - 1
// proposals each, so a step's decode + proposal tokens stay within N; 0 = no cap.
TEST(SchedulerTest, MaxProposalsShrinkWithTheBatch) {
  SpeculativeConfig c;
  c.num_speculative_tokens = 4;
  for (int b : {0, 1, 16, 256}) EXPECT_EQ(MaxProposalsForBatch(c, b), kMaxSpeculativeTokens) << "no cap, B " << b;
  c.step_tokens = 12;
  const std::vector<std::pair<int, int>> table = {{0, 11}, {1, 11}, {2, 5}, {3, 3}, {4, 2}, {5, 1},
                                                  {6, 1},  {7, 0},  {12, 0}, {13, 0}, {64, 0}};
  for (const auto& [b, want] : table) EXPECT_EQ(MaxProposalsForBatch(c, b), want) << "B " << b;
  c.step_tokens = 1000;
  EXPECT_EQ(MaxProposalsForBatch(c, 1), kMaxSpeculativeTokens);  // never past the proposal limit
  SchedulerConfig cfg = Config(8, 4, 4, 64, 64);
  cfg.speculative = c;
  cfg.speculative.step_tokens = -1;
  EXPECT_EQ(Scheduler::Create(cfg).status().code(), StatusCode::kInvalidArgument);
}

// The cap in a real schedule: one sequence alone proposes its full k; the same history with two more running
// sequences (step_tokens 6, B = 3: 6 / 3 - 1 = 1) proposes one token, and the draft model is asked for one; with
// four running (6 / 4 - 1 = 0) nothing is proposed, and the sequences still decode.
TEST(SchedulerTest, SpeculationShortensProposalsAtLargeBatch) {
  for (SpeculativeMethod method : {SpeculativeMethod::kNgram, SpeculativeMethod::kDraft}) {
    for (const auto& [num_seqs, want] : std::vector<std::pair<int, int>>{{1, 4}, {3, 1}, {4, 0}}) {
      SchedulerConfig cfg = Config(/*num_blocks=*/32, /*block_size=*/4, /*max_num_seqs=*/4, /*budget=*/64, 64);
      cfg.speculative.num_speculative_tokens = 4;
      cfg.speculative.method = method;
      cfg.speculative.ngram = {1, 2};
      cfg.speculative.step_tokens = 6;
      Scheduler s(cfg);
      absl::flat_hash_map<uint64_t, std::vector<int32_t>> sampled;
      for (int i = 1; i <= num_seqs; ++i) {
        ASSERT_TRUE(s.AddSequence(i, {5, 6, 7, 5, 6}, 20, 0).ok());
        sampled[i] = {7};
      }
      SchedulerOutput out = s.Schedule();  // prefills
      ASSERT_EQ(static_cast<int>(out.seqs.size()), num_seqs);
      s.OnStepComplete(out, sampled);  // 5 6 7 5 6 | 7
      for (int i = 1; i <= num_seqs; ++i) s.SetDraftProposals(i, 6, {5, 6, 7, 5});

      out = s.Schedule();
      ASSERT_EQ(static_cast<int>(out.seqs.size()), num_seqs);
      for (const ScheduledSeq& v : out.seqs) {
        const std::string where = absl::StrCat(method == SpeculativeMethod::kDraft ? "draft" : "ngram", " B ",
                                               num_seqs, " seq ", v.seq_id);
        EXPECT_EQ(v.num_draft_tokens, want) << where;
        // The last token, then what followed the earlier "6 7" (the copy continues from its own output).
        const std::vector<int32_t> all = {7, 5, 6, 7, 5};
        EXPECT_EQ(v.token_ids, std::vector<int32_t>(all.begin(), all.begin() + 1 + want)) << where;
        EXPECT_TRUE(v.sample) << where;
        if (method == SpeculativeMethod::kDraft) EXPECT_LE(v.num_proposals, want) << where;
      }
      EXPECT_EQ(out.num_batched_tokens, num_seqs * (1 + want));
      EXPECT_TRUE(s.block_manager().CheckConsistency(s.BlockOwnerCounts()).ok());
    }
  }
}

// After a worker loss every running sequence restarts from its own token history, seniority kept, and the
// prefix cache is empty.
TEST(SchedulerTest, RequeueAllForReplayKeepsHistoryAndDropsKv) {
  Scheduler s(Config(8, 4, 4, 64, 64));
  ASSERT_TRUE(s.AddSequence(1, {1, 2, 3, 4, 5}, 8, 0).ok());
  ASSERT_TRUE(s.AddSequence(2, {6, 7, 8, 9, 10}, 8, 0).ok());
  SchedulerOutput out = s.Schedule();
  s.OnStepComplete(out, {{1, {11}}, {2, {12}}});
  s.RequeueAllForReplay();
  EXPECT_EQ(s.num_running(), 0);
  EXPECT_EQ(s.num_waiting(), 2);
  EXPECT_EQ(s.block_manager().num_free_blocks(), 8);
  EXPECT_EQ(s.block_manager().num_cached_blocks(), 0);
  EXPECT_EQ(s.num_preemptions(), 0);
  out = s.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_TRUE(out.finished.empty());
  EXPECT_EQ(out.seqs[0].seq_id, 1u);
  EXPECT_TRUE(out.seqs[0].is_new);
  EXPECT_EQ(out.seqs[0].start_position, 0);
  EXPECT_EQ(out.seqs[0].token_ids, (std::vector<int32_t>{1, 2, 3, 4, 5, 11}));
}

}  // namespace
}  // namespace tpserve::coordinator
