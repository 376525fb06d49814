// NCCL communicator: option validation and clean UNAVAILABLE without GPUs everywhere; a 1-rank group on
// one GPU (set-up, the blocking split, collectives, teardown); the cross-rank collectives and the
// watchdog's abort need >= 2 GPUs (NCCL refuses two ranks on one GPU), with ranks as threads + MemoryStore.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"

namespace tpserve::comm {
namespace {

std::vector<float> RankDataForTest(int rank, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.001f * static_cast<float>(i) + rank) * (rank + 1);
  return v;
}

TEST(NcclCommunicator, BadOptionsAndMissingGpuAreCleanErrors) {
  MemoryStore store;
  NcclOptions bad;
  bad.rank = 2;
  bad.world_size = 2;
  bad.prefix = "test/bad";
  auto r = CreateNcclCommunicator(bad, store);
  ASSERT_FALSE(r.ok());
#ifdef TPSERVE_WITH_CUDA
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("rank 2"), absl::string_view::npos) << r.status();
#else
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
#endif
  if (kernels::CudaDeviceCount() == 0) {
    NcclOptions one;
    one.prefix = "test/nogpu";
    auto c = CreateNcclCommunicator(one, store);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  }
}

TEST(NcclCommunicator, OneRankGroupOnOneGpu) {
  if (kernels::CudaDeviceCount() < 1) GTEST_SKIP() << "no CUDA device";
  auto be = kernels::CreateCudaBackend(0);
  ASSERT_TRUE(be.ok()) << be.status();
  kernels::Backend& gpu = **be;
  const size_t n = 5120 + 3;
  const auto host = std::vector<float>(RankDataForTest(0, n));
  float* d = static_cast<float*>(gpu.Alloc(n * sizeof(float)));
  float* g = static_cast<float*>(gpu.Alloc(n * sizeof(float)));
  gpu.Upload(d, host.data(), n * sizeof(float));
  MemoryStore store;
  NcclOptions o;
  o.prefix = "test/one";
  o.stream = gpu.native_stream();
  o.timeout = absl::Seconds(60);
  auto comm = CreateNcclCommunicator(o, store);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_TRUE((*comm)->stream_ordered());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*comm)->AllReduceSum(d, n).ok());
    ASSERT_TRUE((*comm)->AllGather(d, n, g).ok());
  }
  std::vector<float> reduced(n), gathered(n);
  gpu.Download(reduced.data(), d, n * sizeof(float));
  gpu.Download(gathered.data(), g, n * sizeof(float));
  EXPECT_TRUE((*comm)->AsyncError().ok());
  EXPECT_EQ(reduced, host);  // a sum over one rank is the identity
  EXPECT_EQ(gathered, host);
  comm->reset();
  gpu.Free(d);
  gpu.Free(g);
}

struct RankResult {
  absl::Status status;
  std::vector<float> reduced;
  std::vector<float> gathered;
};

std::vector<float> RankData(int rank, size_t n) { return RankDataForTest(rank, n); }

// One rank: its own backend (GPU `rank`) and communicator on that backend's stream.
void RunRank(int rank, int world, size_t n, Store* store, RankResult* out) {
  auto be = kernels::CreateCudaBackend(rank);
  if (!be.ok()) {
    out->status = be.status();
    return;
  }
  kernels::Backend& gpu = **be;
  // Every allocation and pageable copy happens before the group exists or after this rank's stream has
  // drained: with several ranks in one process, a cudaMalloc / cudaFree or pageable copy can wait on a
  // peer GPU's NCCL kernel, which waits for this rank (a deadlock NCCL's documentation warns about).
  const auto host = RankData(rank, n);
  float* d = static_cast<float*>(gpu.Alloc(n * sizeof(float)));
  float* g = static_cast<float*>(gpu.Alloc(n * world * sizeof(float)));
  gpu.Upload(d, host.data(), n * sizeof(float));
  gpu.Synchronize();
  NcclOptions o;
  o.rank = rank;
  o.world_size = world;
  o.device = rank;
  o.prefix = "test/nccl";
  o.stream = gpu.native_stream();
  o.timeout = absl::Seconds(60);
  auto comm = CreateNcclCommunicator(o, *store);
  if (!comm.ok()) {
    out->status = comm.status();
    return;
  }
  out->status = (*comm)->AllGather(d, n, g);
  if (out->status.ok()) out->status = (*comm)->AllReduceSum(d, n);
  gpu.Synchronize();
  if (out->status.ok()) out->status = (*comm)->AsyncError();
  out->reduced.resize(n);
  out->gathered.resize(n * world);
  gpu.Download(out->reduced.data(), d, n * sizeof(float));
  gpu.Download(out->gathered.data(), g, n * world * sizeof(float));
  comm->reset();
  gpu.Free(d);
  gpu.Free(g);
}

TEST(NcclCommunicator, AllReduceAndAllGatherAcrossGpus) {
  const int devices = kernels::CudaDeviceCount();
  if (devices < 2) GTEST_SKIP() << "needs >= 2 GPUs (NCCL refuses two ranks on one GPU); found " << devices;
  const int world = std::min(devices, 4);
  const size_t n = 5120 * 8 + 3;
  MemoryStore store;
  std::vector<RankResult> results(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(RunRank, r, world, n, &store, &results[r]);
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_TRUE(results[r].status.ok()) << "rank " << r << ": " << results[r].status;

  for (int r = 0; r < world; ++r) {
    const auto want = RankData(r, n);
    EXPECT_EQ(0, std::memcmp(results[0].gathered.data() + r * n, want.data(), n * sizeof(float))) << "slot " << r;
  }
  std::vector<double> sum(n, 0.0);
  for (int r = 0; r < world; ++r) {
    const auto v = RankData(r, n);
    for (size_t i = 0; i < n; ++i) sum[i] += v[i];
  }
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(results[0].reduced[i], sum[i], 1e-5 + 1e-5 * std::fabs(sum[i])) << "element " << i;
  }
  for (int r = 1; r < world; ++r) {
    EXPECT_EQ(0, std::memcmp(results[r].reduced.data(), results[0].reduced.data(), n * sizeof(float)))
        << "rank " << r << " disagrees bitwise with rank 0";
    EXPECT_EQ(results[r].gathered, results[0].gathered);
  }
}

// Rank 1 never joins the all-reduce (a stuck or dead peer): rank 0's watchdog aborts the communicator
// after op_timeout, its stream drains, and AsyncError() is UNAVAILABLE instead of a hang.
TEST(NcclCommunicator, CollectiveWithoutItsPeerIsAbortedAfterTheOpTimeout) {
  const int devices = kernels::CudaDeviceCount();
  if (devices < 2) GTEST_SKIP() << "needs >= 2 GPUs; found " << devices;
  MemoryStore store;
  absl::Status rank0_status, rank0_after;
  absl::Notification rank0_done;
  auto rank = [&](int r) {
    auto be = kernels::CreateCudaBackend(r);
    ASSERT_TRUE(be.ok()) << be.status();
    float* d = static_cast<float*>((*be)->Alloc(4096 * sizeof(float)));
    (*be)->Synchronize();
    NcclOptions o;
    o.rank = r;
    o.world_size = 2;
    o.device = r;
    o.prefix = "test/abort";
    o.stream = (*be)->native_stream();
    o.timeout = absl::Seconds(60);
    o.op_timeout = absl::Seconds(2);
    auto comm = CreateNcclCommunicator(o, store);
    ASSERT_TRUE(comm.ok()) << comm.status();
    if (r == 0) {
      rank0_status = (*comm)->AllReduceSum(d, 4096);
      (*be)->Synchronize();  // returns once the watchdog aborted the communicator
      rank0_after = (*comm)->AllReduceSum(d, 4096);
      rank0_status.Update((*comm)->AsyncError());
      rank0_done.Notify();
    } else {
      ASSERT_TRUE(rank0_done.WaitForNotificationWithTimeout(absl::Seconds(120))) << "rank 0 hung";
    }
    comm->reset();
    (*be)->Free(d);
  };
  std::thread t0(rank, 0), t1(rank, 1);
  t0.join();
  t1.join();
  EXPECT_EQ(rank0_status.code(), absl::StatusCode::kUnavailable) << rank0_status;
  EXPECT_EQ(rank0_after.code(), absl::StatusCode::kUnavailable) << rank0_after;
}

}  // namespace
}  // namespace tpserve::comm
