// Top-k candidates of logits rows on the GPU (greedy argmax is k = 1), so a decode step brings back ids,
// their logits and each row's log-sum-exp instead of [rows, vocab] floats. One block per row: each thread
// keeps its own sorted top-k of a strided slice, then k block-wide arg-max rounds merge the threads' heads.
// Order: larger value first, ties -> lower id, NaN counts as -inf (the host sampler's rules). The log-sum-exp
// is summed in a fixed order (thread slice, then BlockSum), so a row's result never depends on other rows.
#include <climits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"

namespace tpserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool Better(float av, int ai, float bv, int bi) {
  return av > bv || (av == bv && ai < bi);
}

__device__ __forceinline__ float Clean(float x) { return isnan(x) ? -INFINITY : x; }

// Arg-max of (v, i) over the block; every thread gets the winner. `sv`, `si`: 32 entries of shared memory.
__device__ __forceinline__ void BlockArgMax(float& v, int& i, float* sv, int* si) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (Better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  __syncthreads();  // the previous round's readers are done with sv / si
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  v = -INFINITY;
  i = INT_MAX;
  for (int w = 0; w < kThreads / 32; ++w) {  // every thread, same order: the same winner everywhere
    if (Better(sv[w], si[w], v, i)) {
      v = sv[w];
      i = si[w];
    }
  }
}

// logits: parts x [rows, part_len] (the TP all-gather layout: part p holds ids [p * part_len, ...)), ids >= vocab
// are padding. grid: rows; block: kThreads. Writes ids/values [rows, k] and lse [rows].
template <int kCap>
__global__ void __launch_bounds__(kThreads) TopKKernel(const float* __restrict__ logits, int rows, int parts,
                                                       int64_t part_len, int64_t vocab, int k,
                                                       int32_t* __restrict__ ids, float* __restrict__ values,
                                                       float* __restrict__ lse) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float ssum[32];
  const int row = blockIdx.x;
  float tv[kCap];
  int ti[kCap];
#pragma unroll
  for (int j = 0; j < kCap; ++j) {
    tv[j] = -INFINITY;
    ti[j] = INT_MAX;
  }
  for (int p = 0; p < parts; ++p) {
    const float* src = logits + (static_cast<int64_t>(p) * rows + row) * part_len;
    const int64_t base = p * part_len;
    const int64_t n = min(part_len, vocab - base);
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float x = Clean(src[j]);
      const int id = static_cast<int>(base + j);
      if (!Better(x, id, tv[k - 1], ti[k - 1])) continue;
      int s = k - 1;
      while (s > 0 && Better(x, id, tv[s - 1], ti[s - 1])) {
        tv[s] = tv[s - 1];
        ti[s] = ti[s - 1];
        --s;
      }
      tv[s] = x;
      ti[s] = id;
    }
  }
  int head = 0;
  float mx = -INFINITY;
  for (int r = 0; r < k; ++r) {
    float v = head < k ? tv[head] : -INFINITY;
    int i = head < k ? ti[head] : INT_MAX;
    BlockArgMax(v, i, sv, si);
    if (head < k && ti[head] == i) ++head;  // ids are unique: exactly one thread owned the winner
    if (r == 0) mx = v;
    if (threadIdx.x == 0) {
      ids[static_cast<int64_t>(row) * k + r] = i;
      values[static_cast<int64_t>(row) * k + r] = v;
    }
  }
  // log-sum-exp of the row (NaN as -inf); -inf when nothing is finite, as exp(-inf - -inf) would be NaN.
  float sum = 0.0f;
  if (mx != -INFINITY) {
    for (int p = 0; p < parts; ++p) {
      const float* src = logits + (static_cast<int64_t>(p) * rows + row) * part_len;
      const int64_t n = min(part_len, vocab - p * part_len);
      for (int64_t j = threadIdx.x; j < n; j += kThreads) sum += expf(Clean(src[j]) - mx);
    }
  }
  sum = BlockSum(sum, ssum);
  if (threadIdx.x == 0) lse[row] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
}

}  // namespace

void LaunchTopK(const float* logits, int64_t rows, int parts, int64_t part_len, int64_t vocab, int k,
                int32_t* ids, float* values, float* lse, cudaStream_t stream) {
  if (rows <= 0) return;
  TP_CHECK(k >= 1 && k <= kMaxTopK) << "top-k " << k << " outside [1, " << kMaxTopK << "]";
  TP_CHECK(parts >= 1 && part_len >= 1 && vocab >= k && vocab <= parts * part_len && vocab <= INT_MAX)
      << "top-k over vocab " << vocab << " in " << parts << " parts of " << part_len;
  const unsigned int grid = static_cast<unsigned int>(rows);
  const int r = static_cast<int>(rows);
  if (k == 1) {
    TopKKernel<1><<<grid, kThreads, 0, stream>>>(logits, r, parts, part_len, vocab, k, ids, values, lse);
  } else {
    TopKKernel<kMaxTopK><<<grid, kThreads, 0, stream>>>(logits, r, parts, part_len, vocab, k, ids, values, lse);
  }
  TP_CUDA_CHECK_LAUNCH("TopK");
}

}  // namespace tpserve::kernels::cuda
