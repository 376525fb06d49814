// A persistent fork-join thread pool for the CPU backend: workers spin briefly, then sleep, so the ~10
// small ops per layer of a decode step do not pay thread creation or a full futex wake-up each.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tpserve::kernels::cpu {

// Thread-safety: Run / ParallelFor may be called from any thread, one call at a time (serialised by
// an internal mutex); they must not be called from inside a task.
class ThreadPool {
 public:
  // `threads` >= 1 is the total parallelism including the calling thread (threads - 1 workers).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) once for every i in [0, size()), thread i running task i; returns when all are done.
  template <class Fn>
  void Run(Fn&& fn) {
    RunImpl(&CallThunk<std::remove_reference_t<Fn>>, &fn);
  }

  // Splits [0, n) into size() contiguous ranges (none when n == 0) and calls fn(begin, end) for each
  // non-empty one. Runs inline when n < min_parallel (small ops are cheaper than a wake-up).
  template <class Fn>
  void ParallelFor(int64_t n, int64_t min_parallel, Fn&& fn) {
    if (n <= 0) return;
    if (size() == 1 || n < min_parallel) {
      fn(int64_t{0}, n);
      return;
    }
    const int64_t parts = size();
    Run([&](int i) {
      const int64_t begin = n * i / parts, end = n * (i + 1) / parts;
      if (begin < end) fn(begin, end);
    });
  }

  // Like ParallelFor, but every thread takes the next `chunk` of [0, n) until none is left: a thread
  // that was preempted or runs on a busier core does less, instead of everyone waiting for it.
  template <class Fn>
  void ParallelForChunks(int64_t n, int64_t chunk, int64_t min_parallel, Fn&& fn) {
    if (n <= 0) return;
    if (size() == 1 || n < min_parallel) {
      fn(int64_t{0}, n);
      return;
    }
    if (chunk < 1) chunk = 1;
    std::atomic<int64_t> next{0};
    Run([&](int) {
      for (int64_t b = next.fetch_add(chunk, std::memory_order_relaxed); b < n;
           b = next.fetch_add(chunk, std::memory_order_relaxed)) {
        fn(b, b + chunk < n ? b + chunk : n);
      }
    });
  }

 private:
  using Thunk = void (*)(void* ctx, int index);
  template <class Fn>
  static void CallThunk(void* ctx, int index) {
    (*static_cast<Fn*>(ctx))(index);
  }
  void RunImpl(Thunk thunk, void* ctx);
  void WorkerLoop(int index);

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one Run at a time
  // Published task: written before generation_ is bumped (release), read after it is seen (acquire).
  Thunk thunk_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
};

}  // namespace tpserve::kernels::cpu
