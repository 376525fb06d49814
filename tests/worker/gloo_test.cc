// Gloo communicator with ranks as threads over an in-memory store: sums and gathers match an
// independent float64 computation, every rank gets the same bits, and failures return instead of hanging.
#include <signal.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"

namespace tpserve::comm {
namespace {

// Gloo's writev to a peer that just closed raises SIGPIPE; `tpserve worker` ignores it (cli/worker_command.cc
// says why), and so must this process, whose ranks close on each other on purpose.
const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

// Connects `world` ranks concurrently (rendezvous needs all of them at once).
std::vector<std::unique_ptr<Communicator>> ConnectAll(int world, MemoryStore& store, const std::string& prefix) {
  std::vector<std::unique_ptr<Communicator>> comms(world);
  std::vector<absl::Status> status(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.world_size = world;
      o.host = "127.0.0.1";
      o.prefix = prefix;
      o.timeout = absl::Seconds(30);
      absl::StatusOr<std::unique_ptr<Communicator>> c = CreateGlooCommunicator(o, store);
      status[r] = c.status();
      if (c.ok()) comms[r] = std::move(*c);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  return comms;
}

// Runs fn(rank) on every rank concurrently.
template <typename Fn>
void OnAllRanks(int world, Fn fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { fn(r); });
  for (auto& t : threads) t.join();
}

class GlooWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorldTest, AllReduceSumsAndEveryRankGetsTheSameBits) {
  const int world = GetParam();
  MemoryStore store;
  auto comms = ConnectAll(world, store, absl::StrCat("ar", world, "/"));
  ASSERT_EQ(comms.size(), static_cast<size_t>(world));
  for (const auto& c : comms) ASSERT_NE(c, nullptr);
  EXPECT_EQ(comms[1]->rank(), 1);
  EXPECT_EQ(comms[0]->world_size(), world);
  EXPECT_EQ(comms[0]->name(), "gloo");

  // Sizes: one float, odd, the 13B hidden size times a small batch (several ring chunks).
  for (size_t count : {size_t{1}, size_t{5125}, size_t{5120 * 8 + 3}}) {
    std::vector<std::vector<float>> data(world, std::vector<float>(count));
    std::vector<double> expect(count, 0.0);
    for (int r = 0; r < world; ++r) {
      std::mt19937 gen(1234 + r);
      // Mixed magnitudes so that a different summation order would change low bits.
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (size_t i = 0; i < count; ++i) {
        data[r][i] = u(gen) * (i % 7 == 0 ? 1000.0f : 1.0f);
        expect[i] += data[r][i];
      }
    }
    std::vector<absl::Status> st(world);
    OnAllRanks(world, [&](int r) { st[r] = comms[r]->AllReduceSum(data[r].data(), count); });
    for (int r = 0; r < world; ++r) ASSERT_TRUE(st[r].ok()) << st[r];
    for (size_t i = 0; i < count; ++i) {
      ASSERT_NEAR(data[0][i], expect[i], 1e-4 + 1e-6 * std::fabs(expect[i])) << "i " << i;
    }
    for (int r = 1; r < world; ++r) {
      EXPECT_EQ(std::memcmp(data[0].data(), data[r].data(), count * sizeof(float)), 0)
          << "rank " << r << " differs from rank 0 in bits, count " << count;
    }
  }
}

TEST_P(GlooWorldTest, AllGatherConcatenatesInRankOrder) {
  const int world = GetParam();
  MemoryStore store;
  auto comms = ConnectAll(world, store, absl::StrCat("ag", world, "/"));
  const size_t count = 37;
  std::vector<std::vector<float>> recv(world, std::vector<float>(world * count, -1.0f));
  std::vector<absl::Status> st(world);
  OnAllRanks(world, [&](int r) {
    std::vector<float> send(count);
    for (size_t i = 0; i < count; ++i) send[i] = 100.0f * r + 0.5f * i + 0.25f;
    st[r] = comms[r]->AllGather(send.data(), count, recv[r].data());
  });
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(st[r].ok()) << st[r];
    for (int src = 0; src < world; ++src) {
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(recv[r][src * count + i], 100.0f * src + 0.5f * i + 0.25f);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, GlooWorldTest, ::testing::Values(2, 4));

TEST(GlooTest, MissingPeerIsDeadlineExceededNotAHang) {
  MemoryStore store;
  GlooOptions o;
  o.rank = 0;
  o.world_size = 2;
  o.host = "127.0.0.1";
  o.prefix = "lonely/";
  o.timeout = absl::Milliseconds(500);
  absl::StatusOr<std::unique_ptr<Communicator>> c = CreateGlooCommunicator(o, store);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded) << c.status();
}

// Connects two ranks whose collectives may wait up to `op_timeout`.
std::vector<std::unique_ptr<Communicator>> ConnectPair(MemoryStore& store, const std::string& prefix,
                                                       absl::Duration op_timeout) {
  std::vector<std::unique_ptr<Communicator>> comms(2);
  OnAllRanks(2, [&](int r) {
    GlooOptions o;
    o.rank = r;
    o.world_size = 2;
    o.host = "127.0.0.1";
    o.prefix = prefix;
    o.timeout = absl::Seconds(30);
    o.op_timeout = op_timeout;
    auto c = CreateGlooCommunicator(o, store);
    EXPECT_TRUE(c.ok()) << "rank " << r << ": " << c.status();
    if (c.ok()) comms[r] = std::move(*c);
  });
  return comms;
}

// Waits (bounded) until `comm` reports a collective in flight, i.e. it is waiting on its peer.
::testing::AssertionResult WaitInFlight(const Communicator& comm) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (comm.InFlight().empty()) {
    if (absl::Now() > deadline) return ::testing::AssertionFailure() << "the collective never started";
    absl::SleepFor(absl::Milliseconds(1));
  }
  return ::testing::AssertionSuccess();
}

// The op timeout (a minute here) is what a peer that vanished must NOT cost: its closed connection fails the
// survivor's collective at once with UNAVAILABLE. Before, with a short timeout, this test also passed on a
// DEADLINE_EXCEEDED, so it could not tell the two apart.
TEST(GlooTest, PeerThatVanishesMidAllReduceFailsItUnavailableNotByTimeout) {
  MemoryStore store;
  auto comms = ConnectPair(store, "leave/", absl::Minutes(1));
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<float> x(5120 * 8, 1.0f);
  absl::Status s;
  std::thread survivor([&] { s = comms[0]->AllReduceSum(x.data(), x.size()); });
  ASSERT_TRUE(WaitInFlight(*comms[0]));
  EXPECT_NE(comms[0]->InFlight().find("all-reduce"), std::string::npos) << comms[0]->InFlight();
  comms[1].reset();  // rank 1 is gone: its sockets close while rank 0 waits for its chunk
  survivor.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(comms[0]->InFlight().empty());
  // And it stays failed rather than touching a broken pair again.
  EXPECT_EQ(comms[0]->AllReduceSum(x.data(), x.size()).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(comms[0]->AllGather(x.data(), 1, x.data()).code(), absl::StatusCode::kUnavailable);
}

// A peer that hangs (alive, never joins the collective) closes nothing. Abort() from another thread, as the
// worker's control stream does when the next generation's LoadCommand arrives, ends the wait at once; the
// peer's next collective fails too (the connection closed), both tear down, and the pair re-forms under a new
// prefix and sums correctly.
TEST(GlooTest, AbortEndsACollectiveStuckOnAHungPeerAndThePairReforms) {
  MemoryStore store;
  auto comms = ConnectPair(store, "gen1/", absl::Minutes(1));
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<float> x(64, 1.0f);
  absl::Status s;
  std::thread stuck([&] { s = comms[1]->AllReduceSum(x.data(), x.size()); });
  ASSERT_TRUE(WaitInFlight(*comms[1]));
  comms[1]->Abort("generation 2 load arrived");
  stuck.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("generation 2 load arrived"), std::string::npos) << s;
  EXPECT_EQ(comms[1]->AllReduceSum(x.data(), x.size()).code(), absl::StatusCode::kUnavailable);
  absl::Status peer = comms[0]->AllReduceSum(x.data(), x.size());
  EXPECT_EQ(peer.code(), absl::StatusCode::kUnavailable) << peer;
  comms[1]->Abort("twice is harmless");
  comms.clear();

  comms = ConnectPair(store, "gen2/", absl::Minutes(1));
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<std::vector<float>> data = {{1.5f, -2.0f, 3.25f}, {0.5f, 4.0f, -1.25f}};
  std::vector<absl::Status> st(2);
  OnAllRanks(2, [&](int r) { st[r] = comms[r]->AllReduceSum(data[r].data(), data[r].size()); });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(st[r].ok()) << st[r];
    EXPECT_EQ(data[r], (std::vector<float>{2.0f, 2.0f, 2.0f})) << "rank " << r;
  }
}

// The peer goes away in the middle of a large transfer (it aborts: its sockets shut down), and then this rank
// is aborted too, as a survivor is when the next generation's LoadCommand arrives: both end UNAVAILABLE, never
// by the op timeout (a minute here). This does not pin down the case CI hit in issue 15 (the worker's watchdog
// showed a survivor in "all-reduce #389 of 448 floats for 57.9s" after its peer's SIGKILL, Abort included):
// Gloo never fails the one segment a pair is in the middle of receiving, and a buffer with no other operation
// queued then waits on it until the op timeout. Which segment is in flight when the peer leaves is timing;
// this test also passed with gloo::allreduce, whose pipelined segments usually leave another operation queued
// on the same buffer. The fix is structural: the communicator owns every buffer it waits on, and Abort()
// interrupts each wait (UnboundBuffer::abortWaitRecv/abortWaitSend), whatever Gloo did or did not signal.
TEST(GlooTest, AbortEndsAWaitOnASegmentThePeerLeftHalfSent) {
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    MemoryStore store;
    auto comms = ConnectPair(store, absl::StrCat("half", round, "/"), absl::Minutes(1));
    ASSERT_TRUE(comms[0] && comms[1]);
    const size_t count = size_t{32} << 20;  // 128 MiB per rank, a 64 MiB chunk each way
    std::vector<std::vector<float>> data(2, std::vector<float>(count, 1.0f));
    std::vector<absl::Status> st(2);
    std::thread survivor([&] { st[0] = comms[0]->AllReduceSum(data[0].data(), count); });
    std::thread leaver([&] { st[1] = comms[1]->AllReduceSum(data[1].data(), count); });
    ASSERT_TRUE(WaitInFlight(*comms[0]));
    ASSERT_TRUE(WaitInFlight(*comms[1]));
    comms[1]->Abort("the peer went away");
    leaver.join();
    comms[0]->Abort("generation 2 load arrived");
    survivor.join();
    // Both fail, and neither by the op timeout. (A round where the transfer finished first is OK too.)
    for (int r = 0; r < 2; ++r) {
      EXPECT_TRUE(st[r].ok() || st[r].code() == absl::StatusCode::kUnavailable) << "rank " << r << ": " << st[r];
    }
  }
}

// A peer that hangs and is never aborted: the collective ends at op_timeout, not at the 120 s set-up timeout.
TEST(GlooTest, CollectiveOnAHungPeerEndsAtTheOpTimeout) {
  MemoryStore store;
  auto comms = ConnectPair(store, "hung/", absl::Milliseconds(300));
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<float> x(64, 1.0f);
  absl::Status s = comms[0]->AllReduceSum(x.data(), x.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
}

TEST(GlooTest, RejectsNonPositiveOpTimeout) {
  MemoryStore store;
  GlooOptions o;
  o.world_size = 2;
  o.op_timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateGlooCommunicator(o, store).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GlooTest, RejectsBadRank) {
  MemoryStore store;
  GlooOptions o;
  o.rank = 2;
  o.world_size = 2;
  absl::StatusOr<std::unique_ptr<Communicator>> c = CreateGlooCommunicator(o, store);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemoryStoreTest, GetWaitsForSetAndTimesOut) {
  MemoryStore store;
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(store.Set("k", "v").ok());
  });
  absl::StatusOr<std::string> v = store.Get("k", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "v");
  absl::StatusOr<std::string> missing = store.Get("nope", absl::Milliseconds(10));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace tpserve::comm
