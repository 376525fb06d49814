// All-reduce latency per call, ranks as threads of this process: the per-layer collective of the decode
// step for Llama-2-13B (hidden 5120) at batch {1, 8, 64} tokens, for world sizes 2 and 4. Gloo runs on
// 127.0.0.1 over host memory; NCCL (--comm nccl) puts rank r on GPU r, device memory, and times each call
// to stream completion. Prints one table row per (world, floats): mean / p50 / p99 microseconds per call
// and algorithm bandwidth.
//   allreduce-bench [--comm=gloo|nccl] [--worlds=2,4] [--rows=1,8,64] [--hidden=5120] [--iters=300]
//                   [--warmup=30]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/dashed_flags.h"
#include "kernels/backend.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"

ABSL_FLAG(std::vector<std::string>, worlds, std::vector<std::string>({"2", "4"}), "world sizes");
ABSL_FLAG(std::vector<std::string>, rows, std::vector<std::string>({"1", "8", "64"}), "tokens per call");
ABSL_FLAG(int, hidden, 5120, "floats per token");
ABSL_FLAG(int, iters, 300, "timed calls per size");
ABSL_FLAG(int, warmup, 30, "untimed calls per size");
ABSL_FLAG(std::string, comm, "gloo", "gloo (host memory, TCP on 127.0.0.1) or nccl (rank r on GPU r)");

namespace {

using tpserve::comm::Communicator;

struct Stats {
  double mean_us = 0, p50_us = 0, p99_us = 0;
};

Stats Summarise(std::vector<double> us) {
  Stats s;
  if (us.empty()) return s;
  std::sort(us.begin(), us.end());
  for (double x : us) s.mean_us += x;
  s.mean_us /= us.size();
  s.p50_us = us[us.size() / 2];
  s.p99_us = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  return s;
}

// One rank's memory: host vectors for Gloo, device buffers of a CUDA backend for NCCL.
struct RankState {
  std::unique_ptr<tpserve::kernels::Backend> gpu;  // NCCL only
  std::unique_ptr<Communicator> comm;
};

int Run(const std::string& kind, int world, const std::vector<int>& rows, int hidden, int iters, int warmup) {
  const bool nccl = kind == "nccl";
  if (nccl && tpserve::kernels::CudaDeviceCount() < world) {
    std::fprintf(stderr, "allreduce-bench: --comm nccl at world %d needs %d GPUs (NCCL refuses two ranks on one "
                 "GPU); this machine has %d\n", world, world, tpserve::kernels::CudaDeviceCount());
    return 1;
  }
  tpserve::comm::MemoryStore store;
  std::vector<RankState> ranks(world);
  std::vector<absl::Status> status(world);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        absl::StatusOr<std::unique_ptr<Communicator>> c;
        if (nccl) {
          auto be = tpserve::kernels::CreateCudaBackend(r);
          if (!be.ok()) {
            status[r] = be.status();
            return;
          }
          ranks[r].gpu = std::move(*be);
          tpserve::comm::NcclOptions o;
          o.rank = r;
          o.world_size = world;
          o.device = r;
          o.prefix = absl::StrCat("bench", world, "/");
          o.stream = ranks[r].gpu->native_stream();
          o.timeout = absl::Seconds(60);
          c = tpserve::comm::CreateNcclCommunicator(o, store);
        } else {
          tpserve::comm::GlooOptions o;
          o.rank = r;
          o.world_size = world;
          o.host = "127.0.0.1";
          o.prefix = absl::StrCat("bench", world, "/");
          o.timeout = absl::Seconds(60);
          c = tpserve::comm::CreateGlooCommunicator(o, store);
        }
        status[r] = c.status();
        if (c.ok()) ranks[r].comm = std::move(*c);
      });
    }
    for (auto& t : threads) t.join();
  }
  for (int r = 0; r < world; ++r) {
    if (!status[r].ok()) {
      std::fprintf(stderr, "world %d rank %d: %s\n", world, r, status[r].ToString().c_str());
      return 1;
    }
  }
  for (int m : rows) {
    const size_t count = static_cast<size_t>(m) * hidden;
    std::vector<std::vector<double>> times(world);
    std::vector<absl::Status> st(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        std::vector<float> data(count, 1.0f / (r + 1));
        tpserve::kernels::Backend* gpu = ranks[r].gpu.get();
        float* buf = data.data();
        if (gpu != nullptr) buf = static_cast<float*>(gpu->Alloc(count * sizeof(float)));
        for (int i = 0; i < warmup + iters; ++i) {
          // Keep values bounded (not timed).
          if (gpu != nullptr) {
            gpu->Upload(buf, data.data(), count * sizeof(float));
            gpu->Synchronize();
          } else {
            std::fill(data.begin(), data.end(), 1.0f / (r + 1));
          }
          const auto t0 = std::chrono::steady_clock::now();
          absl::Status s = ranks[r].comm->AllReduceSum(buf, count);
          if (gpu != nullptr) gpu->Synchronize();  // NCCL is stream-ordered: time to completion
          const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
          if (!s.ok()) {
            st[r] = s;
            break;
          }
          if (i >= warmup) times[r].push_back(us);
        }
        if (gpu != nullptr) gpu->Free(buf);
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; ++r) {
      if (!st[r].ok()) {
        std::fprintf(stderr, "world %d: %s\n", world, st[r].ToString().c_str());
        return 1;
      }
    }
    const Stats s = Summarise(times[0]);
    const double bytes = static_cast<double>(count) * sizeof(float);
    std::printf("| %5d | %4d x %-5d | %9zu | %9.1f | %9.1f | %9.1f | %8.3f |\n", world, m, hidden, count, s.mean_us,
                s.p50_us, s.p99_us, bytes / (s.mean_us * 1e-6) / 1e9);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  tpserve::bench::ParseDashedCommandLine(argc, argv);
  std::vector<int> worlds, rows;
  for (const std::string& w : absl::GetFlag(FLAGS_worlds)) worlds.push_back(std::stoi(w));
  for (const std::string& r : absl::GetFlag(FLAGS_rows)) rows.push_back(std::stoi(r));
  const std::string kind = absl::GetFlag(FLAGS_comm);
  if (kind != "gloo" && kind != "nccl") {
    std::fprintf(stderr, "allreduce-bench: --comm '%s': expected gloo or nccl\n", kind.c_str());
    return 2;
  }
  if (kind == "nccl") {
    std::printf("NCCL all-reduce (float sum), rank r on GPU r, device buffers, timed to stream completion\n");
  } else {
    std::printf("Gloo ring all-reduce (float sum) on 127.0.0.1, ranks as threads; %u hardware threads\n",
                std::thread::hardware_concurrency());
  }
  std::printf("| world | rows x hidden | floats    | mean us   | p50 us    | p99 us    | GB/s     |\n");
  std::printf("|-------|--------------|-----------|-----------|-----------|-----------|----------|\n");
  for (int w : worlds) {
    if (Run(kind, w, rows, absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_iters), absl::GetFlag(FLAGS_warmup)) != 0) {
      return 1;
    }
  }
  return 0;
}
