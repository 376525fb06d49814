// CUDA op micro-benchmarks at Llama-2-13B shapes (TP=1, bf16 weights and KV): every kernel family of a
// decode step and of prefill, timed with CUDA events on the backend's stream, beside the time the
// docs/GPU.md model expects (bytes moved at --efficiency of the HBM bandwidth, FLOPs at --mma-efficiency
// of the dense bf16 tensor-core peak, and never under a 2 µs launch floor). Prints one table; asserts
// nothing.
//
// Honest numbers need data that does not sit in L2 (50 MB on H100, 60 MB on H200; o_proj's 52 MB would):
// each weight is rotated through copies totalling >= --rotate-mib, and decode attention reads a different
// sequence's KV context (its own blocks) on every call.
//   cuda-ops-bench [--device 0] [--iters 20] [--hbm-tbps 0 (from the GPU's name)] [--rotate-mib 1024]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/rope_table.h"
#ifdef TPSERVE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(int, device, 0, "CUDA device index");
ABSL_FLAG(int, iters, 20, "timed repetitions per measurement (after 3 warm-up runs)");
ABSL_FLAG(double, hbm_tbps, 0, "HBM bandwidth in TB/s for the expected column (0 = from the GPU's name)");
ABSL_FLAG(double, tflops, 0, "dense bf16 tensor-core peak in TFLOP/s (0 = from the GPU's name)");
ABSL_FLAG(double, efficiency, 0.87, "fraction of the HBM bandwidth a good kernel reaches");
ABSL_FLAG(double, mma_efficiency, 0.6, "fraction of the tensor-core peak a good prefill kernel reaches");
ABSL_FLAG(int, rotate_mib, 1024, "each weight is cycled through copies totalling at least this many MiB");

namespace tpserve::kernels {
namespace {

constexpr int kHidden = 5120, kInter = 13824, kHeads = 40, kHeadDim = 128, kLayers = 40, kVocab = 32000;
constexpr double kLaunchFloorUs = 2.0;

// Microseconds per call of fn(i) for i = 0, 1, ...: CUDA events around the timed loop on the backend's
// stream (GPU time only), or the host clock with synchronization when built without CUDA.
double TimeUs(Backend& be, int iters, const std::function<void(int)>& fn) {
  for (int i = 0; i < 3; ++i) fn(i);
  be.Synchronize();
#ifdef TPSERVE_WITH_CUDA
  auto stream = static_cast<cudaStream_t>(be.native_stream());
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, stream);
  for (int i = 0; i < iters; ++i) fn(i + 3);
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * ms / iters;
#else
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) fn(i + 3);
  be.Synchronize();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
#endif
}

void* RandomBf16(Backend& be, int64_t n, uint32_t seed) {
  std::vector<uint16_t> h(n);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& v : h) {
    s = s * 1664525u + 1013904223u;
    v = F32ToBF16((static_cast<float>(s >> 8) / 16777216.0f - 0.5f) * 0.1f);
  }
  void* d = be.Alloc(n * 2);
  be.Upload(d, h.data(), n * 2);
  return d;
}
float* RandomF32(Backend& be, int64_t n, uint32_t seed) {
  std::vector<float> h(n);
  uint32_t s = seed * 2654435761u + 7;
  for (auto& v : h) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
  }
  auto* d = static_cast<float*>(be.Alloc(n * 4));
  be.Upload(d, h.data(), n * 4);
  return d;
}
int32_t* DevInts(Backend& be, const std::vector<int32_t>& v) {
  auto* d = static_cast<int32_t*>(be.Alloc(std::max<size_t>(v.size(), 1) * 4));
  if (!v.empty()) be.Upload(d, v.data(), v.size() * 4);
  return d;
}

// A [rows, cols] bf16 weight and enough copies of it that cycling through them never hits L2.
struct RotatedWeight {
  std::vector<WeightView> copies;
  const WeightView& at(int i) const { return copies[static_cast<size_t>(i) % copies.size()]; }
};
RotatedWeight MakeRotated(Backend& be, int64_t rows, int64_t cols, uint32_t seed, int64_t rotate_bytes) {
  RotatedWeight r;
  const int64_t bytes = 2 * rows * cols;
  const int64_t n = std::max<int64_t>(2, (rotate_bytes + bytes - 1) / bytes);
  void* first = RandomBf16(be, rows * cols, seed);
  std::vector<uint16_t> h(rows * cols);
  be.Download(h.data(), first, bytes);
  r.copies.push_back(WeightView{first, DType::kBF16, rows, cols});
  for (int64_t i = 1; i < n; ++i) {
    void* p = be.Alloc(bytes);
    be.Upload(p, h.data(), bytes);
    r.copies.push_back(WeightView{p, DType::kBF16, rows, cols});
  }
  be.Synchronize();
  return r;
}

struct Peaks {
  double tbps = 0, tflops = 0;
};
Peaks PeaksFor(const std::string& name) {
  Peaks p;
  if (absl::StrContains(name, "H200")) p = {4.8, 989};
  else if (absl::StrContains(name, "H100") && absl::StrContains(name, "PCIe")) p = {2.0, 756};
  else if (absl::StrContains(name, "H100") && absl::StrContains(name, "NVL")) p = {3.9, 835};
  else if (absl::StrContains(name, "H100")) p = {3.35, 989};
  else if (absl::StrContains(name, "A100")) p = {absl::StrContains(name, "80GB") ? 2.0 : 1.55, 312};
  if (absl::GetFlag(FLAGS_hbm_tbps) > 0) p.tbps = absl::GetFlag(FLAGS_hbm_tbps);
  if (absl::GetFlag(FLAGS_tflops) > 0) p.tflops = absl::GetFlag(FLAGS_tflops);
  return p;
}

class Table {
 public:
  explicit Table(Peaks peaks) : peaks_(peaks) {
    std::printf("\n%-24s %-26s %10s %10s %7s %9s %9s\n", "kernel", "shape", "us", "expect us", "ratio", "GB/s",
                "TFLOP/s");
  }
  // Returns the measured µs. bytes: HBM traffic of one call; flops: its arithmetic.
  double Row(const char* kernel, const std::string& shape, double us, double bytes, double flops) {
    const double eff = absl::GetFlag(FLAGS_efficiency), mma = absl::GetFlag(FLAGS_mma_efficiency);
    double expect = kLaunchFloorUs;
    if (peaks_.tbps > 0) expect = std::max(expect, bytes / (eff * peaks_.tbps * 1e6));
    if (peaks_.tflops > 0 && flops > 0) expect = std::max(expect, flops / (mma * peaks_.tflops * 1e6));
    std::printf("%-24s %-26s %10.1f %10.1f %7.2f %9.0f %9.1f\n", kernel, shape.c_str(), us, expect, us / expect,
                bytes / us / 1e3, flops / us / 1e6);
    return us;
  }

 private:
  Peaks peaks_;
};

int Run() {
  auto created = CreateCudaBackend(absl::GetFlag(FLAGS_device));
  if (!created.ok()) {
    std::printf("cuda-ops-bench: %s\n", created.status().ToString().c_str());
    return 1;
  }
  Backend& be = **created;
  const int iters = absl::GetFlag(FLAGS_iters);
  const Peaks peaks = PeaksFor(be.name());
  const int64_t rotate = int64_t{absl::GetFlag(FLAGS_rotate_mib)} << 20;
  std::printf("device: %s; expected = max(bytes / (%.2f x %.2f TB/s), flops / (%.2f x %.0f TFLOP/s), %.0f us)\n",
              be.name().c_str(), absl::GetFlag(FLAGS_efficiency), peaks.tbps, absl::GetFlag(FLAGS_mma_efficiency),
              peaks.tflops, kLaunchFloorUs);
  if (peaks.tbps <= 0) std::printf("unknown GPU: pass --hbm-tbps and --tflops for the expected column\n");

  struct Mat {
    const char* name;
    int64_t rows, cols;
  };
  const std::vector<Mat> mats = {{"qkv", 3 * kHidden, kHidden},
                                 {"o_proj", kHidden, kHidden},
                                 {"gate_up", 2 * kInter, kHidden},
                                 {"down", kHidden, kInter},
                                 {"lm_head", kVocab, kHidden}};
  std::vector<RotatedWeight> w;
  for (size_t i = 0; i < mats.size(); ++i) w.push_back(MakeRotated(be, mats[i].rows, mats[i].cols, 10 + i, rotate));
  WeightView norm{RandomBf16(be, kHidden, 77), DType::kBF16, 1, kHidden};
  const int64_t max_m = 2048;
  float* x = RandomF32(be, max_m * kInter, 1);
  float* x2 = RandomF32(be, max_m * kInter, 2);
  float* y = static_cast<float*>(be.Alloc(sizeof(float) * max_m * 2 * kInter));
  Table t(peaks);

  // Per-layer decode kernels at batch 1 (and the GEMMs at the batch sizes the engine runs).
  double layer_us = 0, lm_us = 0;
  for (int64_t m : {1, 8, 64, 512, 2048}) {
    for (size_t i = 0; i < mats.size(); ++i) {
      if (m > 8 && i == 4) continue;  // lm_head runs on sampled rows only
      const WeightView& w0 = w[i].at(0);
      const double us = TimeUs(be, iters, [&](int k) { be.Matmul(x, m, w[i].at(k), y); });
      const double bytes = 2.0 * w0.rows * w0.cols + 4.0 * m * (w0.rows + w0.cols);
      const std::string shape = "m=" + std::to_string(m) + " " + std::to_string(w0.rows) + "x" +
                                std::to_string(w0.cols);
      t.Row(m <= 8 ? "gemv" : "gemm (cuBLAS)", std::string(mats[i].name) + " " + shape, us, bytes,
            2.0 * m * w0.rows * w0.cols);
      if (m == 1) (i == 4 ? lm_us : layer_us) += us;
    }
  }
  auto small = [&](const char* kernel, int64_t m, double bytes, const std::function<void()>& fn) {
    return t.Row(kernel, "m=" + std::to_string(m), TimeUs(be, iters, [&](int) { fn(); }), bytes, 0);
  };
  for (int64_t m : {1, 64}) {
    const double row = 4.0 * kHidden;
    const double a = small("rmsnorm", m, 2 * row * m + 2 * kHidden, [&] { be.RmsNorm(x, m, norm, 1e-6f, y); });
    const double b = small("add+rmsnorm", m, 4 * row * m + 2 * kHidden,
                           [&] { be.AddRmsNorm(x2, x, m, norm, 1e-6f, y); });
    const double c = small("silu*mul", m, 4.0 * 3 * kInter * m, [&] { be.SiluMul(x, m, kInter, y); });
    std::vector<int32_t> pos(m);
    for (int64_t i = 0; i < m; ++i) pos[i] = 500 + static_cast<int>(i);
    int32_t* dpos = DevInts(be, pos);
    const double d = small("rope", m, 4.0 * 2 * 2 * kHidden * m,
                           [&] { be.Rope(x, x2, dpos, m, kHeads, kHeads, kHeadDim, 10000.0f); });
    (void)d;  // the model runs RoPE fused with the KV write (rope+write_kv below): not in the layer sum
    if (m == 1) layer_us += 2 * a + b + c;  // input + post norm (one of them fused with the residual add)
  }
  // Greedy argmax / top-21 (20 logprobs + the token) over 32000-logit rows: the row is read twice (candidates,
  // then the log-sum-exp); only ids, logits and the lse leave the GPU.
  constexpr int64_t kVocab = 32000;
  float* logits = RandomF32(be, 64 * kVocab, 7);
  int32_t* top_ids = DevInts(be, std::vector<int32_t>(64 * 32));
  float* top_vals = static_cast<float*>(be.Alloc(sizeof(float) * 64 * 32));
  float* top_lse = static_cast<float*>(be.Alloc(sizeof(float) * 64));
  for (int64_t m : {1, 64}) {
    for (int k : {1, 21}) {
      const double us = TimeUs(be, iters, [&](int) {
        be.TopK(logits, m, 1, kVocab, kVocab, k, top_ids, top_vals, top_lse);
      });
      t.Row(k == 1 ? "argmax" : "top-k", "m=" + std::to_string(m) + " k=" + std::to_string(k) + " vocab 32000", us,
            2.0 * 4 * kVocab * m, 0);
      if (m == 1 && k == 1) lm_us += us;  // part of every greedy step
    }
  }

  // Paged KV (bf16, block 16): 64 sequences x 4096 positions, each in its own blocks.
  const int block_size = 16, max_ctx = 4096, max_seqs = 64, blocks_per_seq = max_ctx / block_size;
  KvCacheSpec spec{1, max_seqs * blocks_per_seq, block_size, kHeads, kHeadDim, DType::kBF16};
  auto cache = be.CreateKvCache(spec);
  if (!cache.ok()) {
    std::printf("kv cache: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  float* q = RandomF32(be, int64_t{2048} * kHeads * kHeadDim, 5);
  float* kv = RandomF32(be, int64_t{2048} * kHeads * kHeadDim, 6);
  float* out = static_cast<float*>(be.Alloc(sizeof(float) * 2048 * kHeads * kHeadDim));
  std::vector<int32_t> tables(max_seqs * blocks_per_seq);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  int32_t* d_tables = DevInts(be, tables);
  {
    // Fill every position once (so attention reads written data), 2048 tokens per call.
    std::vector<int32_t> slots(2048);
    int32_t* d_slots = DevInts(be, slots);
    for (int first = 0; first < max_seqs * max_ctx; first += 2048) {
      for (int i = 0; i < 2048; ++i) slots[i] = first + i;
      be.Upload(d_slots, slots.data(), slots.size() * 4);
      AttentionBatch b;
      b.num_tokens = 2048;
      b.slot_mapping = d_slots;
      be.WriteKv(**cache, 0, kv, kv, b);  // stream-ordered after the upload
    }
    AttentionBatch b1;
    b1.num_tokens = 1;
    b1.slot_mapping = DevInts(be, {515});
    small("write_kv", 1, 2 * (4.0 + 2.0) * kHidden, [&] { be.WriteKv(**cache, 0, kv, kv, b1); });
    // What the model runs: RoPE from the load-time table fused with the KV write (q, k rotated in place;
    // k, v stored). m tokens at positions 515.., in sequence 0's blocks.
    const std::vector<float> rope = RopeCosSinTable(10000.0f, kHeadDim, max_ctx);
    float* d_rope = static_cast<float*>(be.Alloc(rope.size() * sizeof(float)));
    float* v64 = RandomF32(be, 64 * kHidden, 8);  // v must not alias k (rotated in place)
    be.Upload(d_rope, rope.data(), rope.size() * sizeof(float));
    for (int m : {1, 64}) {
      std::vector<int32_t> pos(m);
      for (int i = 0; i < m; ++i) pos[i] = 515 + i;
      AttentionBatch bm;
      bm.num_tokens = m;
      bm.positions = DevInts(be, pos);
      bm.slot_mapping = DevInts(be, pos);
      const double us = small("rope+write_kv", m, (3 * 4.0 + 2 * 4.0 + 2 * 2.0) * kHidden * m, [&] {
        be.RopeWriteKv(q, kv, v64, kHeads, kHeads, kHeadDim, 10000.0f, d_rope, max_ctx, **cache, 0, bm);
      });
      if (m == 1) layer_us += us;
    }
  }
  // Decode: `seqs` sequences at context `ctx`; call k reads sequences [k*seqs, k*seqs + seqs) mod 64.
  auto decode = [&](int seqs, int ctx) {
    std::vector<int32_t> qs{0}, ctxs, pos;
    for (int s = 0; s < seqs; ++s) {
      qs.push_back(s + 1);
      ctxs.push_back(ctx);
      pos.push_back(ctx - 1);
    }
    AttentionBatch b;
    b.num_seqs = seqs;
    b.num_tokens = seqs;
    b.max_blocks_per_seq = blocks_per_seq;
    b.max_query_len = 1;
    b.max_context_len = ctx;
    b.query_start = DevInts(be, qs);
    b.context_lens = DevInts(be, ctxs);
    b.positions = DevInts(be, pos);
    const int groups = max_seqs / seqs;
    const double us = TimeUs(be, iters, [&](int k) {
      AttentionBatch bk = b;
      bk.block_tables = d_tables + static_cast<int64_t>(k % groups) * seqs * blocks_per_seq;
      be.Attention(**cache, 0, q, bk, kHeads, 0.088388f, out);
    });
    const double bytes = 2.0 * 2.0 * seqs * ctx * kHidden + 8.0 * seqs * kHidden;
    return t.Row("decode attention", "seqs=" + std::to_string(seqs) + " ctx=" + std::to_string(ctx), us, bytes,
                 4.0 * seqs * ctx * kHidden);
  };
  layer_us += decode(1, 512);
  for (int ctx : {2048, 4096}) decode(1, ctx);
  for (int seqs : {8, 32, 64}) decode(seqs, 512);
  decode(8, 2048);
  // Causal prefill of one sequence from scratch.
  for (int len : {512, 2048}) {
    std::vector<int32_t> pos(len);
    for (int i = 0; i < len; ++i) pos[i] = i;
    AttentionBatch b;
    b.num_seqs = 1;
    b.num_tokens = len;
    b.max_blocks_per_seq = blocks_per_seq;
    b.max_query_len = len;
    b.max_context_len = len;
    b.query_start = DevInts(be, {0, len});
    b.context_lens = DevInts(be, {len});
    b.block_tables = d_tables;
    b.positions = DevInts(be, pos);
    const double us = TimeUs(be, iters, [&](int) { be.Attention(**cache, 0, q, b, kHeads, 0.088388f, out); });
    t.Row("prefill attention", "causal len=" + std::to_string(len), us,
          2.0 * 2.0 * len * kHidden + 8.0 * len * kHidden, 2.0 * double(len) * len * kHidden);
  }

  const double floor_ms = peaks.tbps > 0 ? 26.0 / peaks.tbps : 0;
  const double decode_ms = (kLayers * layer_us + lm_us) / 1e3;
  std::printf("\nbatch-1 decode, sum of kernels at context 512 (40 x layer + lm_head): %.2f ms/token; floor %.2f ms "
              "(26 GB / %.2f TB/s) -> %.2fx\n",
              decode_ms, floor_ms, peaks.tbps, floor_ms > 0 ? decode_ms / floor_ms : 0);
  be.Synchronize();
  return 0;
}

}  // namespace
}  // namespace tpserve::kernels

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tpserve::kernels::Run();
}
