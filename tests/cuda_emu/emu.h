// CPU emulation of the CUDA execution model, force-included when a kernels/cuda/*.cu file is compiled
// as C++ by run_emu_check.sh: one std::thread per CUDA thread, blocks run one after another (so
// __shared__ can be `static`), __syncthreads and warp shuffles are barriers over the threads (of the
// block / warp) that have not exited. Slow, but it executes the kernels' real index math on the CPU.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
#define __align__(n) __attribute__((aligned(n)))
// kernels/cuda/mma_bf16.cuh takes its emulated branch.
#define TPSERVE_CUDA_EMU 1

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
  uint32_t mma_a[32][32][4];  // [warp][lane] fragments of the mma in flight
  uint32_t mma_b[32][32][2];
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

inline float Bf16Lo(uint32_t r) { uint32_t u = r << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline float Bf16Hi(uint32_t r) { uint32_t u = r & 0xffff0000u; float f; std::memcpy(&f, &u, 4); return f; }
inline float Bf16Half(uint32_t r, int half) { return half ? Bf16Hi(r) : Bf16Lo(r); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, emulated from the PTX ISA's fragment layouts
// (written out again in kernels/cuda/mma_bf16.cuh): every lane publishes its A and B registers, then
// computes its own four D elements from the whole warp's fragments. Element (row, k) of A lives in
// lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 * (k >= 8), half k % 2; element (k, n) of
// B in lane n * 4 + (k % 8) / 2, register (k >= 8), half k % 2. Products of bf16 are exact in float;
// the 16-term sum is taken in double and rounded once (the device's order is unspecified; it differs
// from this by float rounding only). An mma with a lane missing is a kernel bug (.aligned): abort.
inline void MmaBf16M16N8K16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  BlockState& s = g_block;
  const int w = Warp(), lane = Lane();
  int live;
  {
    std::lock_guard<std::mutex> l(s.warps[w].mu);
    live = s.warps[w].live;
  }
  if (live != 32) {
    std::fprintf(stderr, "emu: mma.sync with %d of 32 lanes live in warp %d\n", live, w);
    std::abort();
  }
  std::memcpy(s.mma_a[w][lane], a, sizeof(uint32_t) * 4);
  std::memcpy(s.mma_b[w][lane], b, sizeof(uint32_t) * 2);
  s.warps[w].Wait();
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + (i & 1);
    double acc = d[i];
    for (int k = 0; k < 16; ++k) {
      const float av = Bf16Half(s.mma_a[w][(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
      const float bv = Bf16Half(s.mma_b[w][col * 4 + (k % 8) / 2][k >= 8], k % 2);
      acc += static_cast<double>(av) * bv;
    }
    d[i] = static_cast<float>(acc);
  }
  s.warps[w].Wait();  // the fragments are read before any lane's next mma overwrites them
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
inline float __fmul_rn(float a, float b) { return a * b; }  // no contraction on the host either
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
using std::isnan;
using std::max;
using std::min;
