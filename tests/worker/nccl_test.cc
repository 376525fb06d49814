// NCCL communicator: option validation and clean UNAVAILABLE without GPUs everywhere; the collectives
// themselves need >= 2 GPUs (NCCL refuses two ranks on one GPU), with ranks as threads + MemoryStore.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"

namespace tpserve::comm {
namespace {

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

struct RankResult {
  absl::Status status;
  std::vector<float> reduced;
  std::vector<float> gathered;
};

std::vector<float> RankData(int rank, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.001f * static_cast<float>(i) + rank) * (rank + 1);
  return v;
}

// One rank: its own backend (GPU `rank`) and communicator on that backend's stream.
void RunRank(int rank, int world, size_t n, Store* store, RankResult* out) {
  auto be = kernels::CreateCudaBackend(rank);
  if (!be.ok()) {
    out->status = be.status();
    return;
  }
  kernels::Backend& gpu = **be;
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
  const auto host = RankData(rank, n);
  float* d = static_cast<float*>(gpu.Alloc(n * sizeof(float)));
  float* g = static_cast<float*>(gpu.Alloc(n * world * sizeof(float)));
  gpu.Upload(d, host.data(), n * sizeof(float));
  out->status = (*comm)->AllGather(d, n, g);
  if (out->status.ok()) out->status = (*comm)->AllReduceSum(d, n);
  out->reduced.resize(n);
  out->gathered.resize(n * world);
  gpu.Download(out->reduced.data(), d, n * sizeof(float));
  gpu.Download(out->gathered.data(), g, n * world * sizeof(float));
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

}  // namespace
}  // namespace tpserve::comm
