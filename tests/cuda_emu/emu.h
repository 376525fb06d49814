// CPU emulation of the CUDA execution model, force-included when a kernels/cuda/*.cu file is compiled
// as C++ by run_emu_check.sh: one std::thread per CUDA thread, blocks run one after another (so
// __shared__ can be `static`), __syncthreads and warp shuffles are barriers over the threads (of the
// block / warp) that have not exited. Slow, but it executes the kernels' real index math on the CPU.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {

struct Barrier {
  std::mutex mu;
  std::condition_variable cv;
  int live = 0, arrived = 0;
  uint64_t generation = 0;
  void Reset(int n) { live = n; arrived = 0; generation = 0; }
  void Wait() {
    std::unique_lock<std::mutex> l(mu);
    const uint64_t g = generation;
    if (++arrived >= live) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(l, [&] { return generation != g; });
  }
  void Exit() {
    std::unique_lock<std::mutex> l(mu);
    --live;
    if (arrived > 0 && arrived >= live) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    }
  }
};

struct BlockState {
  Barrier block;
  Barrier warps[32];
  float slots[32][32];
  std::vector<float> dynamic_smem;
};
inline BlockState g_block;

struct ThreadIds { dim3 t, b, bd, gd; };
inline thread_local ThreadIds tid;

inline float* DynamicSmem() { return g_block.dynamic_smem.data(); }

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A... args) {
    const int nthreads = static_cast<int>(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          g_block.block.Reset(nthreads);
          for (int w = 0; w < 32; ++w) g_block.warps[w].Reset(std::max(0, std::min(32, nthreads - 32 * w)));
          g_block.dynamic_smem.assign(smem / sizeof(float) + 1, std::nanf(""));
          std::vector<std::thread> threads;
          for (int t = 0; t < nthreads; ++t) {
            threads.emplace_back([&, t, bx, by, bz] {
              tid.t = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              tid.b = dim3(bx, by, bz);
              tid.bd = block;
              tid.gd = grid;
              kernel(args...);
              g_block.warps[t / 32].Exit();
              g_block.block.Exit();
            });
          }
          for (auto& th : threads) th.join();
        }
  }
};
template <typename... P>
Launcher<P...> Launch(void (*k)(P...), dim3 g, dim3 b, size_t smem, cudaStream_t) {
  return Launcher<P...>{k, g, b, smem};
}

inline int Lane() { return static_cast<int>(tid.t.x) & 31; }
inline int Warp() { return static_cast<int>(tid.t.x) >> 5; }
inline float Shfl(float v, int src) {
  BlockState& s = g_block;
  s.slots[Warp()][Lane()] = v;
  s.warps[Warp()].Wait();
  const float r = s.slots[Warp()][src & 31];
  s.warps[Warp()].Wait();
  return r;
}

}  // namespace emu

#define threadIdx (::emu::tid.t)
#define blockIdx (::emu::tid.b)
#define blockDim (::emu::tid.bd)
#define gridDim (::emu::tid.gd)
inline void __syncthreads() { ::emu::g_block.block.Wait(); }
inline float __shfl_xor_sync(unsigned, float v, int mask) { return ::emu::Shfl(v, ::emu::Lane() ^ mask); }
inline float __shfl_sync(unsigned, float v, int src) { return ::emu::Shfl(v, src); }
inline int __shfl_xor_sync(unsigned, int v, int mask) {  // through the float slots, bit for bit
  float f;
  std::memcpy(&f, &v, 4);
  f = ::emu::Shfl(f, ::emu::Lane() ^ mask);
  int r;
  std::memcpy(&r, &f, 4);
  return r;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::isnan;
using std::max;
using std::min;
