// GroupMembership: event-by-event expected-state tables (registration, load, KV sizing, readiness, loss and
// re-forming, refusals, load errors, heartbeats), like scheduler_test. No gRPC, no processes.
#include "coordinator/group_membership.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/worker_protocol.h"
#include "gtest/gtest.h"

namespace tpserve::coordinator {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

enum class Ev {
  kRegister,
  kLoaded,
  kLoadFailed,
  kKvReady,
  kKvFailed,
  kDisconnect,
  kSeen,
  kStaleLoaded,
  kTick,
  kStepTimedOut
};

// One event and the state expected right after it.
struct Row {
  Ev ev;
  int rank;
  // kRegister: world_size (0 = the group's); kLoaded, kStaleLoaded: max_kv_blocks; kSeen: seconds after kT0;
  // kTick: milliseconds after kT0 (every failure happens at kT0).
  int64_t value = 0;
  // Expected:
  bool refuse = false;
  bool send_load = false;
  int allocate = 0;
  bool ready = false;
  int generation = 0;
};

void RunTable(GroupMembership& g, int world_size, const std::vector<Row>& rows) {
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    SCOPED_TRACE(::testing::Message() << "row " << i);
    GroupMembership::Effects fx;
    switch (r.ev) {
      case Ev::kRegister:
        fx = g.Register(r.rank, r.value == 0 ? world_size : static_cast<int>(r.value), kWorkerProtocolVersion, "cpu",
                        "host", "peer", kT0);
        break;
      case Ev::kLoaded:
        fx = g.Loaded(r.rank, g.generation(), {true, "", 1000, r.value, 4096}, kT0);
        break;
      case Ev::kStaleLoaded:  // the answer to the generation before the current one
        fx = g.Loaded(r.rank, g.generation() - 1, {true, "", 1000, r.value, 4096}, kT0);
        break;
      case Ev::kLoadFailed:
        fx = g.Loaded(r.rank, g.generation(), {false, "no such file"}, kT0);
        break;
      case Ev::kKvReady:
        g.KvReady(r.rank, g.generation(), true, "", kT0);
        break;
      case Ev::kKvFailed:
        g.KvReady(r.rank, g.generation(), false, "out of memory", kT0);
        break;
      case Ev::kTick:
        fx = g.Tick(kT0 + absl::Milliseconds(r.value));
        break;
      case Ev::kDisconnect:
        g.Disconnect(r.rank);
        break;
      case Ev::kStepTimedOut:
        fx = g.StepTimedOut(kT0);
        break;
      case Ev::kSeen:
        g.Seen(r.rank, kT0 + absl::Seconds(r.value));
        break;
    }
    EXPECT_EQ(!fx.refuse.empty(), r.refuse) << fx.refuse;
    EXPECT_EQ(fx.send_load, r.send_load);
    EXPECT_EQ(fx.allocate_kv_blocks, r.allocate);
    EXPECT_EQ(g.IsReady(kT0), r.ready);
    EXPECT_EQ(g.generation(), r.generation);
  }
}

GroupMembershipOptions Options(int world_size, int max_kv_blocks = 0) {
  return GroupMembershipOptions{world_size, max_kv_blocks, absl::Seconds(3)};
}

TEST(GroupMembershipTest, FormsWhenAllRanksRegisterLoadAndAllocate) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           {
               //  event         rank value  refuse send_load alloc ready gen
               {Ev::kRegister, 1, 0, false, false, 0, false, 0},
               {Ev::kRegister, 0, 0, false, true, 0, false, 1},  // whole: load, generation 1
               {Ev::kLoaded, 0, 120, false, false, 0, false, 1},
               {Ev::kLoaded, 1, 100, false, false, 100, false, 1},  // the smallest block count
               {Ev::kKvReady, 1, 0, false, false, 0, false, 1},
               {Ev::kKvReady, 0, 0, false, false, 0, true, 1},
           });
  EXPECT_EQ(g.num_kv_blocks(), 100);
  EXPECT_EQ(g.kv_bytes_per_block(), 4096);
  EXPECT_TRUE(g.load_error().ok());
}

TEST(GroupMembershipTest, BadRankWorldSizeAndDuplicatesAreRefusedWithoutJoining) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           {
               {Ev::kRegister, 2, 0, true, false, 0, false, 0},   // rank out of range
               {Ev::kRegister, -1, 0, true, false, 0, false, 0},  // negative rank
               {Ev::kRegister, 0, 4, true, false, 0, false, 0},   // other world size
               {Ev::kRegister, 0, 0, false, false, 0, false, 0},
               {Ev::kRegister, 0, 0, true, false, 0, false, 0},   // rank 0 twice
               {Ev::kRegister, 1, 0, false, true, 0, false, 1},   // the refusals did not count
           });
  EXPECT_FALSE(g.connected(1) && !g.connected(0));
}

TEST(GroupMembershipTest, LossMakesTheGroupNotReadyAndTheReturnReloadsEveryRankUnderANewGeneration) {
  GroupMembership g(Options(2, /*max_kv_blocks=*/50));
  RunTable(g, 2,
           {
               {Ev::kRegister, 0, 0, false, false, 0, false, 0},
               {Ev::kRegister, 1, 0, false, true, 0, false, 1},
               {Ev::kLoaded, 0, 80, false, false, 0, false, 1},
               {Ev::kLoaded, 1, 90, false, false, 50, false, 1},  // capped by max_kv_blocks
               {Ev::kKvReady, 0, 0, false, false, 0, false, 1},
               {Ev::kKvReady, 1, 0, false, false, 0, true, 1},
               {Ev::kDisconnect, 1, 0, false, false, 0, false, 1},  // not ready at once
               {Ev::kLoaded, 0, 80, false, false, 0, false, 1},     // a survivor alone never allocates
               {Ev::kRegister, 1, 0, false, true, 0, false, 2},     // back: everyone loads again, generation 2
               {Ev::kLoaded, 0, 80, false, false, 0, false, 2},
               {Ev::kLoaded, 1, 90, false, false, 50, false, 2},
               {Ev::kKvReady, 0, 0, false, false, 0, false, 2},
               {Ev::kKvReady, 1, 0, false, false, 0, true, 2},
           });
  const auto status = g.Status();
  ASSERT_EQ(status.size(), 2u);
  EXPECT_TRUE(status[0].connected && status[0].loaded && status[1].connected && status[1].loaded);
}

TEST(GroupMembershipTest, LoadAndKvErrorsAreKeptAndNothingIsAllocated) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           {
               {Ev::kRegister, 0, 0, false, false, 0, false, 0},
               {Ev::kRegister, 1, 0, false, true, 0, false, 1},
               {Ev::kLoadFailed, 1, 0, false, false, 0, false, 1},
               {Ev::kLoaded, 0, 80, false, false, 0, false, 1},
           });
  EXPECT_EQ(g.load_error().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(g.load_error().message().find("rank 1"), std::string::npos) << g.load_error();

  GroupMembership none(Options(1));
  RunTable(none, 1,
           {
               {Ev::kRegister, 0, 0, false, true, 0, false, 1},
               {Ev::kLoaded, 0, 0, false, false, 0, false, 1},  // no block fits the budget
           });
  EXPECT_EQ(none.load_error().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(none.load_error().message().find("--kv-cache-memory"), std::string::npos) << none.load_error();

  GroupMembership kv(Options(1));
  RunTable(kv, 1,
           {
               {Ev::kRegister, 0, 0, false, true, 0, false, 1},
               {Ev::kLoaded, 0, 10, false, false, 10, false, 1},
               {Ev::kKvFailed, 0, 0, false, false, 0, false, 1},
           });
  EXPECT_EQ(kv.load_error().code(), absl::StatusCode::kResourceExhausted);
}

// A group of 2 formed in generation 1 with 10 KV blocks, then `then`.
std::vector<Row> FormedGeneration1(std::vector<Row> then) {
  std::vector<Row> rows = {
      //  event            rank value  refuse send_load alloc ready gen
      {Ev::kRegister, 0, 0, false, false, 0, false, 0},
      {Ev::kRegister, 1, 0, false, true, 0, false, 1},
      {Ev::kLoaded, 0, 10, false, false, 0, false, 1},
      {Ev::kLoaded, 1, 10, false, false, 10, false, 1},
      {Ev::kKvReady, 0, 0, false, false, 0, false, 1},
      {Ev::kKvReady, 1, 0, false, false, 0, true, 1},
  };
  rows.insert(rows.end(), then.begin(), then.end());
  return rows;
}

// Formed in generation 1, rank 0 lost and back: generation 2 is loading.
std::vector<Row> ReformingGeneration2(std::vector<Row> then) {
  std::vector<Row> rows = {
      {Ev::kDisconnect, 0, 0, false, false, 0, false, 1},  // rank 0 killed
      {Ev::kRegister, 0, 0, false, true, 0, false, 2},     // its restart: generation 2
  };
  rows.insert(rows.end(), then.begin(), then.end());
  return FormedGeneration1(rows);
}

// Once the group has served, a failed re-formation is not final (CI saw a group never re-form after a worker
// kill, its held requests ending at --recovery-timeout; one failed attempt was final then): it is retried
// under a new generation after a backoff that doubles, and late answers to an abandoned generation never
// count for the current one.
TEST(GroupMembershipTest, AFailedReformationIsRetriedUnderANewGenerationAndLateAnswersAreIgnored) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           ReformingGeneration2({
               //  event            rank value  refuse send_load alloc ready gen
               {Ev::kLoadFailed, 0, 0, false, false, 0, false, 2},  // its rendezvous timed out
               {Ev::kLoaded, 1, 10, false, false, 0, false, 2},     // the abandoned attempt's late answer
               {Ev::kTick, 0, 999, false, false, 0, false, 2},      // backoff 1 s not over
               {Ev::kTick, 0, 1000, false, true, 0, false, 3},      // retried under generation 3
               {Ev::kTick, 0, 5000, false, false, 0, false, 3},     // once
               {Ev::kStaleLoaded, 1, 10, false, false, 0, false, 3},
               {Ev::kLoaded, 0, 10, false, false, 0, false, 3},
               {Ev::kLoaded, 1, 10, false, false, 10, false, 3},
               {Ev::kKvFailed, 1, 0, false, false, 0, false, 3},    // fails again: backoff doubles to 2 s
               {Ev::kTick, 0, 1999, false, false, 0, false, 3},
               {Ev::kTick, 0, 2000, false, true, 0, false, 4},
               {Ev::kLoaded, 0, 10, false, false, 0, false, 4},
               {Ev::kLoaded, 1, 10, false, false, 10, false, 4},
               {Ev::kKvReady, 0, 0, false, false, 0, false, 4},
               {Ev::kKvReady, 1, 0, false, false, 0, true, 4},
           }));
  EXPECT_TRUE(g.load_error().ok()) << "a failure after the group served must not be final: " << g.load_error();
  EXPECT_FALSE(g.retry_pending());
}

// A retry that comes due while a rank is away waits for that rank's return, which starts the load itself.
TEST(GroupMembershipTest, ARetryDueWhileARankIsAwayWaitsForItsReturn) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           ReformingGeneration2({
               {Ev::kLoadFailed, 1, 0, false, false, 0, false, 2},
               {Ev::kDisconnect, 0, 0, false, false, 0, false, 2},
               {Ev::kTick, 0, 1000, false, false, 0, false, 2},  // rank 0 away: nothing to send
               {Ev::kRegister, 0, 0, false, true, 0, false, 3},
           }));
  EXPECT_TRUE(g.load_error().ok()) << g.load_error();
}

TEST(GroupMembershipTest, ASilentRankIsNotReadyUnlessItIsAnsweringAStep) {
  GroupMembership g(Options(2));
  RunTable(g, 2, FormedGeneration1({}));
  g.Seen(0, kT0 + absl::Seconds(10));
  const absl::Time later = kT0 + absl::Seconds(10);  // rank 1 last heard at kT0: past the 3 s timeout
  EXPECT_FALSE(g.IsReady(later));
  EXPECT_TRUE(g.IsReady(later, {false, true}));  // rank 1 is busy with a step it has not answered yet
  g.Seen(1, later);
  EXPECT_TRUE(g.IsReady(later));
  EXPECT_TRUE(g.StepTimedOut(later).send_load);
  EXPECT_FALSE(g.IsReady(later));
}

// A step that times out with every rank still connected (a hung peer, or one stuck behind it in a collective):
// every rank is sent a new generation's LoadCommand at once, and the group forms again. Before, it stayed
// not-ready until --recovery-timeout ended the held requests. With a rank away, its return starts the load.
TEST(GroupMembershipTest, AStepTimeoutReformsTheGroupUnderANewGeneration) {
  GroupMembership g(Options(2));
  RunTable(g, 2,
           FormedGeneration1({
               //  event            rank value  refuse send_load alloc ready gen
               {Ev::kStepTimedOut, 0, 0, false, true, 0, false, 2},  // re-formed at once
               {Ev::kStaleLoaded, 0, 10, false, false, 0, false, 2},  // generation 1's answer: ignored
               {Ev::kLoaded, 0, 10, false, false, 0, false, 2},
               {Ev::kLoaded, 1, 10, false, false, 10, false, 2},
               {Ev::kKvReady, 0, 0, false, false, 0, false, 2},
               {Ev::kKvReady, 1, 0, false, false, 0, true, 2},
               {Ev::kDisconnect, 1, 0, false, false, 0, false, 2},
               {Ev::kStepTimedOut, 0, 0, false, false, 0, false, 2},  // rank 1 away: no load yet
               {Ev::kRegister, 1, 0, false, true, 0, false, 3},       // its return starts it
           }));
}

TEST(GroupMembershipTest, AnotherProtocolVersionIsRefusedNamingTheFix) {
  GroupMembership g(Options(1));
  for (uint32_t version : {0u, kWorkerProtocolVersion + 1}) {
    GroupMembership::Effects fx = g.Register(0, 1, version, "cpu", "host", "peer", kT0);
    EXPECT_NE(fx.refuse.find("same tpserve release"), std::string::npos) << fx.refuse;
    EXPECT_FALSE(fx.send_load);
    EXPECT_FALSE(g.connected(0));
  }
  EXPECT_TRUE(g.Register(0, 1, kWorkerProtocolVersion, "cpu", "host", "peer", kT0).send_load);
}

TEST(GroupMembershipTest, ShutdownIsNeverReadyAndStartsNoLoad) {
  GroupMembership g(Options(1));
  g.Shutdown();
  RunTable(g, 1, {{Ev::kRegister, 0, 0, false, false, 0, false, 0}});
  EXPECT_TRUE(g.shut_down());
}

}  // namespace
}  // namespace tpserve::coordinator
