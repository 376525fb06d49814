// The CPU backend: runtime ISA dispatch (AMX / AVX-512 / AVX2 / baseline) to the kernel tables of
// kernels/cpu/cpu_kernels.h, work split across a persistent thread pool, host memory, paged KV in float32
// or bfloat16.
#include <cpuid.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "kernels/cpu/bf16_pair_panels.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/matmul_int8.h"
#include "kernels/cpu/thread_pool.h"

namespace tpserve::kernels {
namespace {

using cpu::AttentionJob;
using cpu::CpuKernels;
using cpu::MatmulJob;
using cpu::ThreadPool;

bool HasF16c() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & bit_F16C) != 0;
}

bool HasAvx512Bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

bool HasAvx512Vbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
}

// Large buffers (weights, the KV pool) are 2 MiB aligned and asked for transparent huge pages: a decode
// step streams every weight once, and with 4 KiB pages the TLB misses cost ~10% of the read bandwidth.
// (THP is often in "madvise" mode, so without the advice the kernel never backs them with huge pages.)
constexpr size_t kHugePage = size_t{2} << 20;

void* TryAlignedAlloc(size_t bytes) {
  if (bytes >= 2 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (p != nullptr) madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure only costs speed
    return p;
  }
  return std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
}

void* AlignedAlloc(size_t bytes) {
  void* p = TryAlignedAlloc(bytes);
  TP_CHECK(p != nullptr) << "out of host memory allocating " << bytes << " bytes";
  return p;
}

// Per layer K and V, each [num_blocks, block_size, num_kv_heads, head_dim] in spec.dtype (float32 or
// bfloat16: half the bytes a decode step reads per token of context, and twice the sequences per GiB).
// Not zeroed: attention only reads slots that WriteKv filled.
class CpuKvCache : public KvCache {
 public:
  // RESOURCE_EXHAUSTED when the host cannot hold it.
  static absl::StatusOr<std::unique_ptr<CpuKvCache>> Create(const KvCacheSpec& spec) {
    std::unique_ptr<CpuKvCache> c(new CpuKvCache(spec));
    const size_t layer = c->LayerBytes();
    for (int l = 0; l < spec.num_layers; ++l) {
      for (auto* list : {&c->k_, &c->v_}) {
        void* p = TryAlignedAlloc(layer);
        if (p == nullptr) {
          return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a ", c->bytes() >> 20,
                                                           " MiB KV cache in host memory; lower num_blocks"));
        }
        // Touch every page now: the pool is reserved memory, so RSS shows it from startup (an out-of-memory
        // shows at load, not hours later), and the first requests do not pay page faults.
        std::memset(p, 0, layer);
        list->push_back(p);
      }
    }
    return c;
  }
  ~CpuKvCache() override {
    for (void* p : k_) std::free(p);
    for (void* p : v_) std::free(p);
  }
  const KvCacheSpec& spec() const override { return spec_; }
  size_t bytes() const override { return LayerBytes() * 2 * spec_.num_layers; }
  size_t LayerBytes() const {
    return static_cast<size_t>(spec_.num_blocks) * spec_.block_size * spec_.num_kv_heads * spec_.head_dim *
           DTypeSize(spec_.dtype);
  }
  void* k(int layer) const { return k_[layer]; }
  void* v(int layer) const { return v_[layer]; }

 private:
  explicit CpuKvCache(const KvCacheSpec& spec) : spec_(spec) {}
  KvCacheSpec spec_;
  std::vector<void*> k_, v_;
};

// The first `n` elements of `buf`, grown as needed, starting on a 64-byte boundary: the matmul kernels read
// x in whole cache lines, and a 64-byte load that straddles two lines costs two.
uint16_t* CacheLineAligned(std::vector<uint16_t>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n + 32) buf.resize(n + 32);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<uint16_t*>((p + 63) / 64 * 64);
}

// cos/sin of position * inv_freq for positions [0, rows), computed exactly as the reference does
// (float32 inv_freq and angle, as HF), so RoPE matches the reference bitwise.
struct RopeTable {
  int rows = 0;
  std::vector<float> cos, sin;  // [rows, head_dim / 2]
};

// Thread-safety: one op at a time (ops share the pool and per-call scratch buffers).
class CpuBackend : public Backend {
 public:
  // int8_vbmi: pack int8 weights as kInt8PairBlocks (the caller checked the CPU has AVX512-VBMI).
  CpuBackend(CpuIsa isa, const CpuKernels& kernels, int threads, bool int8_vbmi)
      : isa_(isa),
        k_(kernels),
        int8_(cpu::Int8MatmulKernel(isa, kernels.bf16_dot(DType::kBF16))),
        int8_vbmi_(int8_vbmi),
        pool_(threads) {}

  std::string name() const override { return absl::StrCat("cpu-", k_.name); }
  bool is_host() const override { return true; }
  bool supports_int8_weights() const override { return true; }

  void* Alloc(size_t bytes) override { return AlignedAlloc(bytes); }
  void Free(void* p) override { std::free(p); }
  void Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void Download(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void Synchronize() override {}

  // avx512-bf16 only: BF16 weights into pair panels (kernels/cpu/bf16_pair_panels.h has the layout, and
  // matmul_avx512_bf16_pairs.cc why). In place, panel by panel, one 16-row scratch per thread.
  bool PackMatmulWeight(WeightView* w) override {
    if (k_.matmul_pairs == nullptr || (w->dtype != DType::kBF16 && w->dtype != DType::kI8) ||
        w->layout != WeightLayout::kRowMajor || w->rows <= 0 || w->cols <= 0) {
      return false;
    }
    // int8 weights (--quantization int8) go into the same panels, byte for byte: the pair-panel kernel widens
    // them to bf16 in registers, so int8 gets bf16's register tiles at half the bytes.
    // With AVX512-VBMI they go in sign-magnitude 2-pair blocks, widened by byte lookups (about half the
    // instructions: matmul_int8_pairs_avx512vbmi.cc), unless a -128 (no sign-magnitude form) is present.
    if (w->dtype == DType::kI8) {
      const bool blocks = int8_vbmi_ && cpu::Int8FitsPairBlocks(static_cast<const int8_t*>(w->data), w->rows * w->cols);
      if (blocks) return RepackPanels(w, &cpu::RepackInt8PairBlocks, WeightLayout::kInt8PairBlocks);
      return RepackPanels(w, &cpu::RepackInt8PairPanels, WeightLayout::kInt8PairPanels);
    }
    return RepackPanels(w, &cpu::RepackBf16PairPanels, WeightLayout::kBf16PairPanels);
  }

  // In place, panel by panel, one 16-row scratch per thread.
  template <class E>
  bool RepackPanels(WeightView* w, void (*repack)(E*, int64_t, int64_t, int64_t, int64_t, E*), WeightLayout layout) {
    E* data = static_cast<E*>(const_cast<void*>(w->data));
    const int64_t panels = (w->rows + cpu::kPairPanelCols - 1) / cpu::kPairPanelCols;
    pool_.ParallelFor(panels, 2, [&](int64_t b, int64_t e) {
      std::vector<E> scratch(static_cast<size_t>(cpu::kPairPanelCols * w->cols));
      repack(data, w->rows, w->cols, b, e, scratch.data());
    });
    w->layout = layout;
    return true;
  }

  void Matmul(const float* x, int64_t m, const WeightView& w, float* y) override {
    if (m <= 0 || w.rows <= 0) return;
    if (w.dtype == DType::kI8 && w.layout == WeightLayout::kRowMajor) return MatmulInt8(x, m, w, y);
    // Pair-panel weights (PackMatmulWeight) take their own kernel and x packing (bf16_pair_panels.h).
    const bool int8_pairs = w.layout == WeightLayout::kInt8PairPanels || w.layout == WeightLayout::kInt8PairBlocks;
    const bool pairs = w.layout == WeightLayout::kBf16PairPanels || int8_pairs;
    TP_CHECK(pairs || w.dtype != DType::kI8) << "int8 weights in an unknown layout";
    TP_CHECK(!pairs || (k_.matmul_pairs != nullptr && w.dtype == (int8_pairs ? DType::kI8 : DType::kBF16) &&
                        (w.layout != WeightLayout::kInt8PairBlocks || int8_vbmi_)))
        << "a pair-panel weight reached the " << k_.name << " kernels, which cannot read it";
    MatmulJob job;
    job.x = x;
    job.m = m;
    job.k = w.cols;
    job.w = w.data;
    job.wdt = w.dtype;
    job.scales = w.dtype == DType::kI8 ? w.scales : nullptr;
    job.int8_blocks = w.layout == WeightLayout::kInt8PairBlocks;
    job.n = w.rows;
    job.y = y;
    if (pairs || k_.bf16_dot(w.dtype)) {
      const int64_t total = m * w.cols;
      uint16_t* xb = CacheLineAligned(xb_, total);
      pool_.ParallelFor(total, 1 << 16, [&](int64_t b, int64_t e) { k_.round_to_bf16(x + b, e - b, xb + b); });
      job.xb = xb;
    }
    if (!pairs && k_.split_x(w.dtype)) {
      const int64_t kp = cpu::SplitXCols(w.cols);
      if (static_cast<int64_t>(xs_.size()) < m * kp) xs_.resize(m * kp);
      float* xs = xs_.data();
      pool_.ParallelFor(m, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) k_.split_x_row(x + r * w.cols, w.cols, xs + r * kp);
      });
      job.xs = xs;
    }
    if (pairs || (job.xb != nullptr && k_.pack_x(w.dtype, w.cols))) {
      const auto pack = pairs ? &cpu::PackXPairsBlock : k_.pack_x_block;
      const int64_t blocks = (m + 15) / 16;
      const int64_t block_elems = 16 * cpu::PackXCols(w.cols);
      uint16_t* xp = CacheLineAligned(xp_, blocks * block_elems);
      // One block (decode, m <= 16) on this thread: a fork / join per matmul cost more than the packing.
      pool_.ParallelFor(blocks, 2, [&](int64_t b, int64_t e) {
        for (int64_t blk = b; blk < e; ++blk) pack(job.xb, m, w.cols, blk, xp);
      });
      job.xp = xp;
    }
    // Columns in chunks of 16-feature units, about 8 per thread, taken by whichever thread is free; the
    // value of each element is independent of the split (cpu_kernels.h), only the load balance changes.
    // Chunks are multiples of 6 units (96 rows): even, so the AMX kernel keeps its 32-row groups whole, and
    // whole 6-row tiles of the vdpbf16ps kernel (no partial tile at every chunk's end). Pair panels (one a
    // unit) take multiples of 12: whole 4-panel decode tiles and 3-panel prefill tiles; decode (m < 4, only
    // 4-panel tiles) takes multiples of 4 instead: with 12, the 128 units of a 2048-row matmul made 11
    // chunks on 2 threads, and the thread left with the 11th ran it alone while the other waited.
    const int64_t units = (w.rows + 15) / 16;
    const int64_t flops = 2 * m * w.rows * w.cols;
    const int64_t step = pairs ? (m < 4 ? 4 : 12) : 6;
    const int64_t chunk = std::max<int64_t>(step, units / (8 * pool_.size()) / step * step);
    const auto kernel = pairs ? k_.matmul_pairs : k_.matmul;
    pool_.ParallelForChunks(units, chunk, flops > (1 << 18) ? 2 : units + 1, [&](int64_t b, int64_t e) {
      kernel(job, b * 16, std::min(w.rows, e * 16));
    });
  }

  // int8 weights (matmul_int8.h): rows in 16-row units, about 8 chunks per thread, as above.
  void MatmulInt8(const float* x, int64_t m, const WeightView& w, float* y) {
    cpu::Int8MatmulJob job{x, nullptr, m, w.cols, static_cast<const int8_t*>(w.data), w.scales, w.rows, y};
    if (int8_.bf16_x) {
      const int64_t total = m * w.cols;
      uint16_t* xb = CacheLineAligned(xb_, total);
      pool_.ParallelFor(total, 1 << 16, [&](int64_t b, int64_t e) { k_.round_to_bf16(x + b, e - b, xb + b); });
      job.xb = xb;
    }
    const int64_t units = (w.rows + 15) / 16;
    const int64_t flops = 2 * m * w.rows * w.cols;
    const int64_t chunk = std::max<int64_t>(1, units / (8 * pool_.size()));
    pool_.ParallelForChunks(units, chunk, flops > (1 << 18) ? 2 : units + 1, [&](int64_t b, int64_t e) {
      int8_.fn(job, b * 16, std::min(w.rows, e * 16));
    });
  }

  void Embedding(const int32_t* ids, int64_t n, const WeightView& table, int64_t vocab_begin,
                 float* out) override {
    const int64_t d = table.cols;
    const size_t esize = DTypeSize(table.dtype);
    pool_.ParallelFor(n, 8, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t row = static_cast<int64_t>(ids[i]) - vocab_begin;
        if (row >= 0 && row < table.rows) {
          k_.convert_row(static_cast<const char*>(table.data) + row * d * esize, table.dtype, d, out + i * d);
        } else {
          std::memset(out + i * d, 0, d * sizeof(float));
        }
      }
    });
  }

  void RmsNorm(const float* x, int64_t rows, const WeightView& w, float eps, float* out) override {
    const int64_t d = w.cols;
    pool_.ParallelFor(rows, 8, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) k_.rms_norm_row(x + r * d, d, w.data, w.dtype, eps, out + r * d);
    });
  }

  void AddRmsNorm(float* residual, const float* x, int64_t rows, const WeightView& w, float eps,
                  float* out) override {
    const int64_t d = w.cols;
    pool_.ParallelFor(rows, 8, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        k_.add_rms_norm_row(residual + r * d, x + r * d, d, w.data, w.dtype, eps, out + r * d);
      }
    });
  }

  void Rope(float* q, float* k, const int32_t* positions, int64_t n, int nq, int nk, int head_dim,
            float theta) override {
    if (n <= 0) return;
    int32_t max_pos = 0;
    for (int64_t t = 0; t < n; ++t) {
      TP_CHECK(positions[t] >= 0) << "negative position " << positions[t] << " at token " << t;
      max_pos = std::max(max_pos, positions[t]);
    }
    const RopeTable& table = RopeTableFor(theta, head_dim, max_pos + 1);
    const int half = head_dim / 2;
    pool_.ParallelFor(n, 16, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const float* c = table.cos.data() + static_cast<int64_t>(positions[t]) * half;
        const float* s = table.sin.data() + static_cast<int64_t>(positions[t]) * half;
        k_.rope(q + t * nq * head_dim, nq, head_dim, c, s);
        k_.rope(k + t * nk * head_dim, nk, head_dim, c, s);
      }
    });
  }

  void SiluMul(const float* gate_up, int64_t rows, int64_t inter, float* out) override {
    // Split the flattened [rows, inter] output so one long decode row still uses every thread.
    pool_.ParallelFor(rows * inter, 1 << 14, [&](int64_t b, int64_t e) {
      while (b < e) {
        const int64_t r = b / inter, i = b % inter;
        const int64_t len = std::min(e - b, inter - i);
        const float* g = gate_up + r * 2 * inter + i;
        k_.silu_mul(g, g + inter, len, out + r * inter + i);
        b += len;
      }
    });
  }

  void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out) override {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(out + i * dim, x + static_cast<int64_t>(rows[i]) * dim, dim * sizeof(float));
    }
  }

  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) override {
    if (spec.num_layers <= 0 || spec.num_blocks <= 0 || spec.block_size <= 0 || spec.num_kv_heads <= 0 ||
        spec.head_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KvCacheSpec needs positive num_layers, num_blocks, block_size, num_kv_heads and head_dim; got ",
          spec.num_layers, ", ", spec.num_blocks, ", ", spec.block_size, ", ", spec.num_kv_heads, ", ",
          spec.head_dim));
    }
    if (spec.dtype != DType::kF32 && spec.dtype != DType::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat("the CPU KV cache holds float32 or bfloat16, not ",
                                                     DTypeName(spec.dtype)));
    }
    auto cache = CpuKvCache::Create(spec);
    if (!cache.ok()) return cache.status();
    return std::unique_ptr<KvCache>(std::move(*cache));
  }

  size_t KvBlockBytes(const KvCacheSpec& spec) const override {
    return static_cast<size_t>(spec.num_layers) * 2 * spec.block_size * spec.num_kv_heads * spec.head_dim *
           DTypeSize(spec.dtype);
  }

  // Negative slots (padding tokens) are skipped.
  void WriteKv(KvCache& cache, int layer, const float* k, const float* v, const AttentionBatch& batch) override {
    auto* c = dynamic_cast<CpuKvCache*>(&cache);
    TP_CHECK(c != nullptr) << "KV cache was not created by the CPU backend";
    const KvCacheSpec& s = c->spec();
    TP_CHECK(layer >= 0 && layer < s.num_layers) << "layer " << layer;
    const int64_t row = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
    for (int t = 0; t < batch.num_tokens; ++t) {
      const int64_t slot = batch.slot_mapping[t];
      if (slot < 0) continue;
      TP_CHECK(slot < static_cast<int64_t>(s.num_blocks) * s.block_size) << "slot " << slot;
      if (s.dtype == DType::kBF16) {
        k_.round_to_bf16(k + t * row, row, static_cast<uint16_t*>(c->k(layer)) + slot * row);
        k_.round_to_bf16(v + t * row, row, static_cast<uint16_t*>(c->v(layer)) + slot * row);
      } else {
        std::memcpy(static_cast<float*>(c->k(layer)) + slot * row, k + t * row, row * sizeof(float));
        std::memcpy(static_cast<float*>(c->v(layer)) + slot * row, v + t * row, row * sizeof(float));
      }
    }
  }

  void Attention(const KvCache& cache, int layer, const float* q, const AttentionBatch& batch, int nq,
                 float scale, float* out) override {
    const auto* c = dynamic_cast<const CpuKvCache*>(&cache);
    TP_CHECK(c != nullptr) << "KV cache was not created by the CPU backend";
    const KvCacheSpec& s = c->spec();
    const int nk = s.num_kv_heads, hd = s.head_dim;
    TP_CHECK(nq % nk == 0) << "nq " << nq << " not a multiple of nk " << nk;
    const int group = nq / nk;
    const int nt = batch.num_tokens;
    if (nt <= 0) return;
    // Jobs are (query block, kv head): up to kQueryBlock consecutive tokens of one sequence share each
    // K/V chunk while it is in L1 (a 512-token prefill otherwise streams every K/V row once per token).
    // Split by cost (summed context) so long prefill tails do not land on one thread.
    constexpr int kQueryBlock = 8;
    contexts_.resize(nt);
    for (int t = 0; t < nt; ++t) contexts_[t] = batch.positions[t] + 1;
    units_.clear();
    cost_prefix_.assign(1, 0);
    for (int sq = 0; sq < batch.num_seqs; ++sq) {
      for (int t = batch.query_start[sq]; t < batch.query_start[sq + 1]; t += kQueryBlock) {
        const int len = std::min(kQueryBlock, batch.query_start[sq + 1] - t);
        units_.push_back({sq, t, len});
        int64_t cost = 0;
        for (int i = 0; i < len; ++i) cost += contexts_[t + i];
        cost_prefix_.push_back(cost_prefix_.back() + cost);
      }
    }
    const int nu = static_cast<int>(units_.size());
    const int threads = pool_.size();
    const int64_t scratch_floats = cpu::AttentionScratchFloats(kQueryBlock, group, hd);
    if (static_cast<int64_t>(attn_scratch_.size()) < scratch_floats * threads) {
      attn_scratch_.resize(scratch_floats * threads);
    }
    const int64_t total = cost_prefix_[nu] * nk;
    auto run = [&](int tid) {
      // Job j = u * nk + kh costs cost(u); find this thread's share of the cumulative cost.
      auto job_at_cost = [&](int64_t cost) -> int64_t {
        if (cost >= total) return static_cast<int64_t>(nu) * nk;
        // Unit u spans costs [prefix[u] * nk, prefix[u + 1] * nk), cost(u) per KV head.
        const int u = static_cast<int>(
            std::upper_bound(cost_prefix_.begin(), cost_prefix_.end(), cost / nk) - cost_prefix_.begin() - 1);
        const int64_t unit_cost = cost_prefix_[u + 1] - cost_prefix_[u];
        return static_cast<int64_t>(u) * nk + (cost - cost_prefix_[u] * nk) / unit_cost;
      };
      const int64_t jb = job_at_cost(total * tid / threads), je = job_at_cost(total * (tid + 1) / threads);
      AttentionJob job;
      job.k_cache = c->k(layer);
      job.v_cache = c->v(layer);
      job.kv_dtype = s.dtype;
      job.block_size = s.block_size;
      job.num_kv_heads = nk;
      job.head_dim = hd;
      job.group = group;
      job.scale = scale;
      job.q_stride = static_cast<int64_t>(nq) * hd;
      job.scratch = attn_scratch_.data() + scratch_floats * tid;
      for (int64_t j = jb; j < je; ++j) {
        const QueryBlock& u = units_[j / nk];
        const int kh = static_cast<int>(j % nk);
        job.kv_head = kh;
        job.tokens = u.tokens;
        job.contexts = contexts_.data() + u.first;
        job.q = q + (static_cast<int64_t>(u.first) * nq + kh * group) * hd;
        job.out = out + (static_cast<int64_t>(u.first) * nq + kh * group) * hd;
        job.block_table = batch.block_tables + static_cast<int64_t>(u.seq) * batch.max_blocks_per_seq;
        k_.attention(job);
      }
    };
    if (total < 4096 || threads == 1) {
      // Whole call on this thread: a tiny decode step is cheaper than a wake-up.
      for (int tid = 0; tid < threads; ++tid) run(tid);
    } else {
      pool_.Run(run);
    }
  }

 private:
  const RopeTable& RopeTableFor(float theta, int head_dim, int rows) {
    std::lock_guard<std::mutex> lock(rope_mu_);
    RopeTable& t = rope_tables_[{theta, head_dim}];
    if (t.rows >= rows) return t;
    int grown = std::max(rows, 2 * t.rows);
    grown = std::max(grown, 256);
    const int half = head_dim / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      inv_freq[i] = 1.0f / static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(exponent)));
    }
    t.cos.resize(static_cast<size_t>(grown) * half);
    t.sin.resize(static_cast<size_t>(grown) * half);
    for (int p = t.rows; p < grown; ++p) {
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq[i];
        t.cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
        t.sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
      }
    }
    t.rows = grown;
    return t;
  }

  CpuIsa isa_;
  const CpuKernels& k_;
  cpu::Int8Kernel int8_;
  const bool int8_vbmi_;
  ThreadPool pool_;
  std::vector<uint16_t> xb_;  // x rounded to bf16 for vdpbf16ps matmuls
  std::vector<float> xs_;     // x rows repacked by split_x_row
  std::vector<uint16_t> xp_;  // xb packed by pack_x_block (AMX token tiles, vdpbf16ps strips)
  std::vector<float> attn_scratch_;
  struct QueryBlock {
    int seq, first, tokens;
  };
  std::vector<QueryBlock> units_;  // attention jobs' query blocks
  std::vector<int> contexts_;
  std::vector<int64_t> cost_prefix_;
  std::mutex rope_mu_;
  std::map<std::pair<float, int>, RopeTable> rope_tables_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CpuBackendOptions.threads must be >= 0 (0 = all cores), got ", options.threads));
  }
  const CpuIsa best = DetectCpuIsa();
  CpuIsa isa = options.isa == CpuIsa::kAuto ? best : options.isa;
  // Each ISA is a superset of the next: amx > avx512 > avx2 > scalar.
  auto rank = [](CpuIsa i) {
    switch (i) {
      case CpuIsa::kAmx: return 3;
      case CpuIsa::kAvx512: return 2;
      case CpuIsa::kAvx2: return 1;
      default: return 0;
    }
  };
  const bool supported = isa == CpuIsa::kScalar || (rank(isa) <= rank(best) && HasF16c());
  if (!supported) {
    return absl::InvalidArgumentError(absl::StrCat("CpuBackendOptions.isa = ", CpuIsaName(isa),
                                                   " is not supported by this CPU (best available: ",
                                                   CpuIsaName(best), ")"));
  }
  const CpuKernels* kernels = nullptr;
  switch (isa) {
    case CpuIsa::kAmx: kernels = &cpu::AmxKernels(); break;
    case CpuIsa::kAvx512: kernels = &cpu::Avx512Kernels(HasAvx512Bf16()); break;
    case CpuIsa::kAvx2: kernels = &cpu::Avx2Kernels(); break;
    default: kernels = &cpu::ScalarKernels(); break;
  }
  int threads = options.threads;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const bool int8_vbmi = options.int8_vbmi && kernels->matmul_pairs != nullptr && HasAvx512Vbmi();
  return std::unique_ptr<Backend>(new CpuBackend(isa, *kernels, threads, int8_vbmi));
}

}  // namespace tpserve::kernels
