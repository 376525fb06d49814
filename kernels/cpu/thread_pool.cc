// Implementation of kernels/cpu/thread_pool.h.
#include "kernels/cpu/thread_pool.h"

#include <chrono>

#include "common/log.h"

namespace tpserve::kernels::cpu {
namespace {

// Spin for up to ~100 µs: covers the gap between consecutive ops of one decode step without burning a
// core for long when the model is idle. Time-based because `pause` costs 10-140 cycles by CPU model.
constexpr auto kSpinTime = std::chrono::microseconds(100);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  TP_CHECK(threads >= 1) << "threads " << threads;
  workers_.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(sleep_mu_);
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  sleep_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunImpl(Thunk thunk, void* ctx) {
  if (workers_.empty()) {
    thunk(ctx, 0);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mu_);
  thunk_ = thunk;
  ctx_ = ctx;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    // Bumping under sleep_mu_ pairs with the sleeper's predicate check, so no wake-up is lost.
    std::lock_guard<std::mutex> lock(sleep_mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  if (sleepers_.load(std::memory_order_acquire) > 0) sleep_cv_.notify_all();
  thunk(ctx, 0);
  while (pending_.load(std::memory_order_acquire) != 0) CpuRelax();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    const auto spin_start = std::chrono::steady_clock::now();
    for (int spin = 1; gen == seen; ++spin) {
      CpuRelax();
      gen = generation_.load(std::memory_order_acquire);
      if (spin % 64 == 0 && std::chrono::steady_clock::now() - spin_start > kSpinTime) break;
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(sleep_mu_);
      sleepers_.fetch_add(1, std::memory_order_acq_rel);
      sleep_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    thunk_(ctx_, index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace tpserve::kernels::cpu
