// Gloo all-reduce latency per call on 127.0.0.1, ranks as threads of this process: the per-layer collective
// of the decode step for Llama-2-13B (hidden 5120) at batch {1, 8, 64} tokens, for world sizes 2 and 4.
// Prints one table row per (world, floats): mean / p50 / p99 microseconds per call and algorithm bandwidth.
//   allreduce-bench [--worlds=2,4] [--rows=1,8,64] [--hidden=5120] [--iters=300] [--warmup=30]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"

ABSL_FLAG(std::vector<std::string>, worlds, std::vector<std::string>({"2", "4"}), "world sizes");
ABSL_FLAG(std::vector<std::string>, rows, std::vector<std::string>({"1", "8", "64"}), "tokens per call");
ABSL_FLAG(int, hidden, 5120, "floats per token");
ABSL_FLAG(int, iters, 300, "timed calls per size");
ABSL_FLAG(int, warmup, 30, "untimed calls per size");

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

int Run(int world, const std::vector<int>& rows, int hidden, int iters, int warmup) {
  tpserve::comm::MemoryStore store;
  std::vector<std::unique_ptr<Communicator>> comms(world);
  std::vector<absl::Status> status(world);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        tpserve::comm::GlooOptions o;
        o.rank = r;
        o.world_size = world;
        o.host = "127.0.0.1";
        o.prefix = absl::StrCat("bench", world, "/");
        o.timeout = absl::Seconds(60);
        auto c = tpserve::comm::CreateGlooCommunicator(o, store);
        status[r] = c.status();
        if (c.ok()) comms[r] = std::move(*c);
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
        for (int i = 0; i < warmup + iters; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          absl::Status s = comms[r]->AllReduceSum(data.data(), count);
          const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
          if (!s.ok()) {
            st[r] = s;
            return;
          }
          if (i >= warmup) times[r].push_back(us);
          std::fill(data.begin(), data.end(), 1.0f / (r + 1));  // keep values bounded
        }
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
  absl::ParseCommandLine(argc, argv);
  std::vector<int> worlds, rows;
  for (const std::string& w : absl::GetFlag(FLAGS_worlds)) worlds.push_back(std::stoi(w));
  for (const std::string& r : absl::GetFlag(FLAGS_rows)) rows.push_back(std::stoi(r));
  std::printf("Gloo ring all-reduce (float sum) on 127.0.0.1, ranks as threads; %u hardware threads\n",
              std::thread::hardware_concurrency());
  std::printf("| world | rows x hidden | floats    | mean us   | p50 us    | p99 us    | GB/s     |\n");
  std::printf("|-------|--------------|-----------|-----------|-----------|-----------|----------|\n");
  for (int w : worlds) {
    if (Run(w, rows, absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_iters), absl::GetFlag(FLAGS_warmup)) != 0) {
      return 1;
    }
  }
  return 0;
}
