// CUDA op micro-benchmarks at Llama-2-13B shapes (TP=1, bf16): per-layer GEMV/GEMM time and achieved
// bandwidth, an estimate of batch-1 decode weight-streaming ms/token (40 layers + lm_head), and paged
// decode/prefill attention. Prints tables; asserts nothing.
//   cuda-ops-bench [--device 0] [--iters 20]
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
#include "common/dtype.h"
#include "kernels/backend.h"

ABSL_FLAG(int, device, 0, "CUDA device index");
ABSL_FLAG(int, iters, 20, "timed repetitions per measurement (after 3 warm-up runs)");

namespace tpserve::kernels {
namespace {

constexpr int kHidden = 5120, kInter = 13824, kHeads = 40, kHeadDim = 128, kLayers = 40, kVocab = 32000;

// Milliseconds per call of `fn`, synchronizing around the timed loop.
double TimeMs(Backend& be, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  be.Synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) fn();
  be.Synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
}

// Device buffer of `n` pseudo-random bf16 values in [-0.05, 0.05) (weights) or f32 (activations).
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

int Run() {
  auto created = CreateCudaBackend(absl::GetFlag(FLAGS_device));
  if (!created.ok()) {
    std::printf("cuda-ops-bench: %s\n", created.status().ToString().c_str());
    return 1;
  }
  Backend& be = **created;
  const int iters = absl::GetFlag(FLAGS_iters);
  std::printf("device: %s\n", be.name().c_str());

  struct Mat {
    const char* name;
    int64_t rows, cols;
  };
  const std::vector<Mat> layer = {{"qkv", 3 * kHidden, kHidden},
                                  {"o_proj", kHidden, kHidden},
                                  {"gate_up", 2 * kInter, kHidden},
                                  {"down", kHidden, kInter}};
  std::vector<WeightView> weights;
  for (size_t i = 0; i < layer.size(); ++i) {
    weights.push_back(WeightView{RandomBf16(be, layer[i].rows * layer[i].cols, 10 + i), DType::kBF16, layer[i].rows,
                                 layer[i].cols});
  }
  WeightView lm_head{RandomBf16(be, int64_t{kVocab} * kHidden, 99), DType::kBF16, kVocab, kHidden};
  const int64_t max_m = 2048;
  float* x = RandomF32(be, max_m * kInter, 1);
  float* y = static_cast<float*>(be.Alloc(sizeof(float) * max_m * 2 * kInter));

  std::printf("\n%-8s %6s %10s %10s %10s\n", "matmul", "m", "ms", "GB/s", "TFLOP/s");
  double layer_ms_m1 = 0, lm_ms_m1 = 0;
  for (int64_t m : {1, 2, 4, 8, 16, 64, 512, 2048}) {
    double layer_ms = 0, layer_bytes = 0, layer_flops = 0;
    for (size_t i = 0; i < layer.size(); ++i) {
      const WeightView& w = weights[i];
      const double ms = TimeMs(be, iters, [&] { be.Matmul(x, m, w, y); });
      const double bytes = 2.0 * w.rows * w.cols;
      const double flops = 2.0 * m * w.rows * w.cols;
      if (m == 1 || m == 8 || m == 2048) {
        std::printf("%-8s %6lld %10.4f %10.1f %10.2f\n", layer[i].name, static_cast<long long>(m), ms,
                    bytes / ms / 1e6, flops / ms / 1e9);
      }
      layer_ms += ms;
      layer_bytes += bytes;
      layer_flops += flops;
    }
    std::printf("%-8s %6lld %10.4f %10.1f %10.2f\n", "layer", static_cast<long long>(m), layer_ms,
                layer_bytes / layer_ms / 1e6, layer_flops / layer_ms / 1e9);
    if (m == 1) {
      layer_ms_m1 = layer_ms;
      lm_ms_m1 = TimeMs(be, iters, [&] { be.Matmul(x, 1, lm_head, y); });
    }
  }
  const double decode_ms = kLayers * layer_ms_m1 + lm_ms_m1;
  const double weight_gb = (kLayers * 2.0 * (4.0 * kHidden * kHidden + 3.0 * kHidden * kInter) + 2.0 * kVocab * kHidden) / 1e9;
  std::printf("\nbatch-1 decode weight streaming (40 layers + lm_head, matmuls only): %.2f ms/token, %.1f GB -> %.0f GB/s\n",
              decode_ms, weight_gb, weight_gb / decode_ms * 1e3);

  // Attention on a paged cache: 40 heads x 128, block 16.
  const int block_size = 16;
  const int max_ctx = 4096;
  const int max_seqs = 64;
  const int blocks_per_seq = max_ctx / block_size;
  KvCacheSpec spec{1, max_seqs * blocks_per_seq, block_size, kHeads, kHeadDim};
  auto cache = be.CreateKvCache(spec);
  if (!cache.ok()) {
    std::printf("kv cache: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  float* q = RandomF32(be, int64_t{max_seqs} * max_ctx / 16 * kHeads * kHeadDim, 5);  // >= 2048 tokens
  float* out = static_cast<float*>(be.Alloc(sizeof(float) * 2048 * kHeads * kHeadDim));
  std::vector<int32_t> tables(max_seqs * blocks_per_seq);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  auto* d_tables = static_cast<int32_t*>(be.Alloc(tables.size() * 4));
  be.Upload(d_tables, tables.data(), tables.size() * 4);
  auto upload_ints = [&](const std::vector<int32_t>& v) {
    auto* d = static_cast<int32_t*>(be.Alloc(std::max<size_t>(v.size(), 1) * 4));
    be.Upload(d, v.data(), v.size() * 4);
    return d;
  };

  std::printf("\n%-22s %6s %8s %10s %10s\n", "attention", "seqs", "ctx", "ms/layer", "KV GB/s");
  auto bench_attention = [&](int seqs, int ctx, int qlen) {
    std::vector<int32_t> qs{0}, ctxs, pos;
    for (int s = 0; s < seqs; ++s) {
      qs.push_back(qs.back() + qlen);
      ctxs.push_back(ctx);
      for (int t = ctx - qlen; t < ctx; ++t) pos.push_back(t);
    }
    AttentionBatch b;
    b.num_seqs = seqs;
    b.num_tokens = qs.back();
    b.max_blocks_per_seq = blocks_per_seq;
    b.max_query_len = qlen;
    b.max_context_len = ctx;
    b.query_start = upload_ints(qs);
    b.context_lens = upload_ints(ctxs);
    b.block_tables = d_tables;
    b.positions = upload_ints(pos);
    const double ms = TimeMs(be, iters, [&] { be.Attention(**cache, 0, q, b, kHeads, 0.088388f, out); });
    const double kv_bytes = 2.0 * 2.0 * seqs * ctx * kHeads * kHeadDim;
    std::printf("%-22s %6d %8d %10.4f %10.1f\n", qlen == 1 ? "decode" : "prefill (causal)", seqs, ctx, ms,
                kv_bytes / ms / 1e6);
  };
  for (int seqs : {1, 8, 32, 64}) bench_attention(seqs, 512, 1);
  for (int seqs : {1, 8, 64}) bench_attention(seqs, 2048, 1);
  bench_attention(1, 4096, 1);
  bench_attention(1, 512, 512);
  bench_attention(1, 2048, 2048);
  be.Synchronize();
  return 0;
}

}  // namespace
}  // namespace tpserve::kernels

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tpserve::kernels::Run();
}
