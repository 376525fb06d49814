// Runs the CUDA kernels under CPU emulation (emu.h) against the reference backend on small shapes
// that still cross every tile/split/vector-path boundary. A development check for machines without a
// GPU: bash tests/cuda_emu/run_emu_check.sh (not part of the CMake build).
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/host_top_k.h"
#include "kernels/rope_table.h"

namespace tpserve::kernels {
namespace {

int g_failures = 0;

std::vector<float> Rand(size_t n, uint32_t seed, float lo = -1, float hi = 1, bool bf16_exact = false) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = bf16_exact ? BF16ToF32(F32ToBF16(d(rng))) : d(rng);
  return v;
}

void Check(const std::vector<float>& got, const std::vector<float>& want, double abs_tol, double rel_tol,
           const std::string& what) {
  size_t bad = 0, worst = 0;
  double worst_err = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= abs_tol + rel_tol * std::fabs(want[i]))) ++bad;
    if (!(err <= worst_err)) {
      worst_err = err;
      worst = i;
    }
  }
  std::printf("%-44s %s  (max err %.3g at %zu: got %.6g want %.6g)\n", what.c_str(), bad ? "FAIL" : "ok",
              worst_err, worst, got.empty() ? 0.0 : got[worst], want.empty() ? 0.0 : want[worst]);
  if (bad) ++g_failures;
}

std::vector<uint16_t> Bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = F32ToBF16(v[i]);
  return o;
}

// The int8 GEMV against the reference backend's kI8 matmul (scale after the float64 dot product).
void CheckGemvInt8(Backend& ref) {
  for (int64_t k : {528, 520, 17}) {  // vector path, k % 16 != 0, short row
    for (int64_t m : {1, 3, 8}) {
      const int64_t n = 37;
      auto x = Rand(m * k, 5 + m);
      std::mt19937 rng(static_cast<uint32_t>(k));
      std::vector<int8_t> w(n * k);
      for (auto& v : w) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
      auto scales = Rand(n, 9, 0.001f, 0.01f);
      WeightView view{w.data(), DType::kI8, n, k};
      view.scales = scales.data();
      std::vector<float> want(m * n), got(m * n, NAN);
      ref.Matmul(x.data(), m, view, want.data());
      cuda::LaunchGemvInt8(x.data(), m, w.data(), scales.data(), n, k, got.data(), nullptr);
      Check(got, want, 1e-5, 1e-5, "gemv int8 m=" + std::to_string(m) + " k=" + std::to_string(k));
    }
  }
}

void CheckGemv(Backend& ref) {
  for (int64_t k : {520, 517, 8}) {
    for (int64_t m : {1, 3, 8}) {
      const int64_t n = 37;
      auto x = Rand(m * k, 1 + m), wf = Rand(n * k, 2 + k);
      auto w = Bf16(wf);
      std::vector<float> want(m * n), got(m * n, NAN);
      ref.Matmul(x.data(), m, WeightView{w.data(), DType::kBF16, n, k}, want.data());
      cuda::LaunchGemv16(x.data(), m, w.data(), 1, n, k, got.data(), nullptr);
      Check(got, want, 1e-5, 1e-5, "gemv m=" + std::to_string(m) + " k=" + std::to_string(k));
    }
  }
  // f16 path
  const int64_t m = 2, n = 9, k = 64;
  auto x = Rand(m * k, 5), wf = Rand(n * k, 6);
  std::vector<uint16_t> w(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) w[i] = F32ToF16(wf[i]);
  std::vector<float> want(m * n), got(m * n, NAN);
  ref.Matmul(x.data(), m, WeightView{w.data(), DType::kF16, n, k}, want.data());
  cuda::LaunchGemv16(x.data(), m, w.data(), 2, n, k, got.data(), nullptr);
  Check(got, want, 1e-5, 1e-5, "gemv f16");
}

// RMSNorm and add+RMSNorm at `cols` (a multiple of 4 takes the 16-byte path).
void CheckNorms(Backend& ref, int64_t cols) {
  const int64_t rows = 3;
  auto x = Rand(rows * cols, 10, -3, 3), wf = Rand(cols, 11, 0.5f, 1.5f), r = Rand(rows * cols, 12);
  auto w = Bf16(wf);
  WeightView wv{w.data(), DType::kBF16, 1, cols};
  std::vector<float> want(x.size()), got(x.size(), NAN);
  ref.RmsNorm(x.data(), rows, wv, 1e-5f, want.data());
  cuda::LaunchRmsNorm(x.data(), rows, cols, w.data(), 1, 1e-5f, got.data(), nullptr);
  const std::string c = " cols=" + std::to_string(cols);
  Check(got, want, 1e-5, 1e-5, "rmsnorm" + c);
  auto rr = r, rg = r;
  std::vector<float> want2(x.size()), got2(x.size(), NAN);
  ref.AddRmsNorm(rr.data(), x.data(), rows, wv, 1e-5f, want2.data());
  cuda::LaunchAddRmsNorm(rg.data(), x.data(), rows, cols, w.data(), 1, 1e-5f, got2.data(), nullptr);
  Check(rg, rr, 0, 0, "add+rmsnorm residual" + c);
  Check(got2, want2, 1e-5, 1e-5, "add+rmsnorm out" + c);
}

void CheckElementwise(Backend& ref) {
  CheckNorms(ref, 517);
  CheckNorms(ref, 520);
  const int64_t rows = 3, cols = 517;
  auto x = Rand(rows * cols, 10, -3, 3), r = Rand(rows * cols, 12);

  std::vector<int32_t> ids = {5, 9, 2, 20, 7};
  auto table = Rand(10 * cols, 13);
  auto tb = Bf16(table);
  std::vector<float> we(ids.size() * cols), ge(ids.size() * cols, NAN);
  ref.Embedding(ids.data(), ids.size(), WeightView{tb.data(), DType::kBF16, 10, cols}, 3, we.data());
  cuda::LaunchEmbedding(ids.data(), ids.size(), tb.data(), 1, 10, cols, 3, ge.data(), nullptr);
  Check(ge, we, 0, 0, "embedding");

  for (int64_t inter : {300, 301}) {
    auto gu = Rand(rows * 2 * inter, 14, -5, 5);
    std::vector<float> ws(rows * inter), gs(rows * inter, NAN);
    ref.SiluMul(gu.data(), rows, inter, ws.data());
    cuda::LaunchSiluMul(gu.data(), rows, inter, gs.data(), nullptr);
    Check(gs, ws, 1e-6, 1e-5, "silu*mul inter=" + std::to_string(inter));
  }

  std::vector<int32_t> sel = {2, 0, 2};
  std::vector<float> wg(sel.size() * cols), gg(sel.size() * cols, NAN);
  ref.GatherRows(x.data(), sel.data(), sel.size(), cols, wg.data());
  cuda::LaunchGatherRows(x.data(), sel.data(), sel.size(), cols, gg.data(), nullptr);
  Check(gg, wg, 0, 0, "gather rows");

  for (int hd : {8, 128, 2}) {
    const int nq = 3, nk = 2;
    std::vector<int32_t> pos = {0, 1, 33, 700};
    auto q = Rand(pos.size() * nq * hd, 15), k = Rand(pos.size() * nk * hd, 16);
    auto q2 = q, k2 = k;
    ref.Rope(q.data(), k.data(), pos.data(), pos.size(), nq, nk, hd, 10000.0f);
    cuda::LaunchRope(q2.data(), k2.data(), pos.data(), pos.size(), nq, nk, hd, 10000.0f, nullptr);
    Check(q2, q, 2e-4, 1e-4, "rope q hd=" + std::to_string(hd));
    Check(k2, k, 2e-4, 1e-4, "rope k hd=" + std::to_string(hd));
  }
}

// Top-k / argmax against the host implementation (kernels/host_top_k.h): ties, NaN, -inf rows, the TP
// all-gather layout with vocab padding, k = 1 and k = kMaxTopK.
void CheckTopK() {
  struct Case { int64_t rows; int parts; int64_t part_len, vocab; int k; };
  for (const Case c : {Case{3, 1, 1000, 1000, 1}, Case{3, 1, 1000, 1000, 20}, Case{2, 2, 517, 1030, 5},
                       Case{2, 3, 300, 899, 32}, Case{1, 1, 40, 33, 1}}) {
    auto l = Rand(size_t(c.parts) * c.rows * c.part_len, 21 + c.k, -4, 2);
    for (size_t i = 0; i < l.size(); i += 7) l[i] = 2.5f;  // many exact ties at the top
    l[3] = NAN;
    l[10] = INFINITY * -1;
    if (c.rows > 1 && c.parts == 1) {  // a row with no finite entry
      for (int64_t j = 0; j < c.part_len; ++j) l[c.part_len + j] = j % 2 ? NAN : -INFINITY;
    }
    std::vector<int32_t> wi(c.rows * c.k), gi(c.rows * c.k, -7);
    std::vector<float> wv(c.rows * c.k), gv(c.rows * c.k, NAN), wl(c.rows), gl(c.rows, NAN);
    HostTopK(l.data(), c.rows, c.parts, c.part_len, c.vocab, c.k, wi.data(), wv.data(), wl.data());
    cuda::LaunchTopK(l.data(), c.rows, c.parts, c.part_len, c.vocab, c.k, gi.data(), gv.data(), gl.data(), nullptr);
    const std::string what = "topk parts=" + std::to_string(c.parts) + " vocab=" + std::to_string(c.vocab) +
                             " k=" + std::to_string(c.k);
    Check(std::vector<float>(gi.begin(), gi.end()), std::vector<float>(wi.begin(), wi.end()), 0, 0, what + " ids");
    auto finite = [](std::vector<float> v) {  // -inf == -inf for the comparison (an all -inf row)
      for (float& x : v) x = std::isinf(x) ? (x > 0 ? 1e30f : -1e30f) : x;
      return v;
    };
    Check(finite(gv), finite(wv), 0, 0, what + " values");
    for (int64_t r = 0; r < c.rows; ++r) {  // -inf rows must be -inf on both sides
      if (std::isinf(wl[r]) || std::isinf(gl[r])) {
        if (wl[r] != gl[r]) ++g_failures, std::printf("%s lse row %lld: %g vs %g FAIL\n", what.c_str(), (long long)r, gl[r], wl[r]);
        wl[r] = gl[r] = 0;
      }
    }
    Check(gl, wl, 1e-5, 1e-5, what + " lse");
  }
}

// The tensor-core primitive alone: each warp of a 2-warp block loads its own A [16, 16] and B [16, 8]
// (bf16-exact) and C [16, 8] into registers by the PTX ISA's table for mma.m16n8k16 (written out here
// per register, not shared with the emulator's lookup), runs MmaBf16M16N8K16 and stores D the same
// way; D must equal the plain matmul A B + C.
void MmaPrimitiveKernel(const float* a, const float* b, const float* c, float* d) {
  using cuda::PackBf16x2;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float* A = a + warp * 256;  // [16][16]
  const float* B = b + warp * 128;  // [16][8], B[k][n] at k * 8 + n
  const float* C = c + warp * 128;  // [16][8]
  float* D = d + warp * 128;
  const uint32_t af[4] = {PackBf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                          PackBf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                          PackBf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                          PackBf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t bf[2] = {PackBf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
                          PackBf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
  float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  cuda::MmaBf16M16N8K16(acc, af, bf);
  D[g * 8 + 2 * t] = acc[0];
  D[g * 8 + 2 * t + 1] = acc[1];
  D[(g + 8) * 8 + 2 * t] = acc[2];
  D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

void CheckMmaPrimitive() {
  auto a = Rand(2 * 256, 71, -2, 2, true), b = Rand(2 * 128, 72, -2, 2, true), c = Rand(2 * 128, 73);
  std::vector<float> want(2 * 128), got(2 * 128, NAN);
  for (int w = 0; w < 2; ++w)
    for (int i = 0; i < 16; ++i)
      for (int n = 0; n < 8; ++n) {
        double acc = c[w * 128 + i * 8 + n];
        for (int k = 0; k < 16; ++k) acc += double(a[w * 256 + i * 16 + k]) * b[w * 128 + k * 8 + n];
        want[w * 128 + i * 8 + n] = static_cast<float>(acc);
      }
  ::emu::Launch(MmaPrimitiveKernel, dim3(1), dim3(64), 0, nullptr)(a.data(), b.data(), c.data(), got.data());
  Check(got, want, 1e-6, 1e-6, "mma.sync m16n8k16 bf16 vs plain matmul");
  // bf16 rounding of the packing: round-to-nearest-even at the tie and an ordinary value.
  const uint32_t packed = cuda::PackBf16x2(1.0f + 1.0f / 256, 1.0f + 3.0f / 256);  // ties: down to even, up to even
  if (packed != (0x3f80u | (0x3f82u << 16))) {
    ++g_failures;
    std::printf("PackBf16x2 ties FAIL: %08x\n", packed);
  }
}

// RoPE from the table fused with the KV write, against the reference's Rope then the cache contents it
// implies: q and k bitwise (the table holds the reference's cos / sin, the rotation does not contract),
// the cache the rotated k and v in its dtype, padding slots (-1) untouched, positions past the table
// computed in the kernel with the same result.
void CheckRopeWriteKv(Backend& ref, tpserve::DType kv_dtype) {
  const int nq = 5, nk = 2, hd = 128, n = 6, table_positions = 64;
  const int64_t kvw = int64_t{nk} * hd;
  const float theta = 10000.0f;
  const std::vector<int32_t> positions = {0, 1, 63, 64, 500, 7};  // 64 and 500: past the table
  const std::vector<int32_t> slots = {3, 0, -1, 5, 1, 4};
  auto q = Rand(size_t(n) * nq * hd, 81, -2, 2), k = Rand(size_t(n) * kvw, 82, -2, 2), v = Rand(size_t(n) * kvw, 83);
  auto rq = q, rk = k;
  ref.Rope(rq.data(), rk.data(), positions.data(), n, nq, nk, hd, theta);
  const int num_slots = 8;
  const size_t esize = DTypeSize(kv_dtype);
  std::vector<char> kc(num_slots * kvw * esize, 0x7f), vc(num_slots * kvw * esize, 0x7f);
  const std::vector<float> table = RopeCosSinTable(theta, hd, table_positions);
  cuda::RopeWriteKvParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.positions = positions.data();
  p.slot_mapping = slots.data();
  p.num_tokens = n;
  p.nq = nq;
  p.nk = nk;
  p.head_dim = hd;
  p.theta = theta;
  p.cos_sin = table.data();
  p.table_positions = table_positions;
  p.kv_dtype = static_cast<int>(kv_dtype);
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  cuda::LaunchRopeWriteKv(p, nullptr);
  const std::string what = std::string("rope+kv write ") + DTypeName(kv_dtype);
  Check(q, rq, 0, 0, what + " q (bitwise)");
  Check(k, rk, 0, 0, what + " k (bitwise)");
  auto cached = [&](const std::vector<char>& c, int slot, int64_t i) -> float {
    if (kv_dtype == tpserve::DType::kF32) return reinterpret_cast<const float*>(c.data())[slot * kvw + i];
    return BF16ToF32(reinterpret_cast<const uint16_t*>(c.data())[slot * kvw + i]);
  };
  auto stored = [&](float x) { return kv_dtype == tpserve::DType::kF32 ? x : BF16ToF32(F32ToBF16(x)); };
  std::vector<float> got, want;
  for (int t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    for (int64_t i = 0; i < kvw; ++i) {
      got.push_back(cached(kc, slots[t], i));
      want.push_back(stored(rk[t * kvw + i]));
      got.push_back(cached(vc, slots[t], i));
      want.push_back(stored(v[t * kvw + i]));
    }
  }
  Check(got, want, 0, 0, what + " cache (bitwise)");
  // Slots 2, 6, 7 were never written (token 2's slot is -1): still the fill pattern.
  size_t touched = 0;
  for (int slot : {2, 6, 7})
    for (int64_t b = 0; b < kvw * int64_t(esize); ++b) touched += kc[slot * kvw * esize + b] != 0x7f;
  if (touched) ++g_failures, std::printf("%s: %zu bytes written outside the slots FAIL\n", what.c_str(), touched);
}

struct Seq {
  int history, query;
};

// kv_dtype kBF16: K/V are bf16-exact so both caches hold the same numbers; kF32: K/V are not, so a
// cache that rounded them would fail the tolerance.
void CheckAttention(Backend& ref, int nq, int nk, int hd, int bs, const std::vector<Seq>& seqs, uint32_t seed,
                    DType kv_dtype = DType::kBF16) {
  const bool exact = kv_dtype == DType::kBF16;
  int max_blocks = 0, max_q = 0, max_ctx = 0;
  for (auto s : seqs) {
    max_blocks = std::max(max_blocks, (s.history + s.query + bs - 1) / bs);
    max_q = std::max(max_q, s.query);
    max_ctx = std::max(max_ctx, s.history + s.query);
  }
  const int num_blocks = max_blocks * static_cast<int>(seqs.size()) + 2;
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  std::vector<int32_t> tables(seqs.size() * max_blocks), qs{0}, ctxs, slots, pos, hist_slots;
  int next = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (int j = 0; j < max_blocks; ++j) tables[i * max_blocks + j] = perm[next++];
    auto slot = [&](int p) { return tables[i * max_blocks + p / bs] * bs + p % bs; };
    for (int p = 0; p < seqs[i].history; ++p) hist_slots.push_back(slot(p));
    for (int p = seqs[i].history; p < seqs[i].history + seqs[i].query; ++p) {
      slots.push_back(slot(p));
      pos.push_back(p);
    }
    qs.push_back(qs.back() + seqs[i].query);
    ctxs.push_back(seqs[i].history + seqs[i].query);
  }
  const int T = qs.back(), H = static_cast<int>(hist_slots.size()), kvw = nk * hd;
  auto hk = Rand(size_t(H) * kvw, seed + 1, -1, 1, exact), hv = Rand(size_t(H) * kvw, seed + 2, -1, 1, exact);
  auto k = Rand(size_t(T) * kvw, seed + 3, -1, 1, exact), v = Rand(size_t(T) * kvw, seed + 4, -1, 1, exact);
  auto q = Rand(size_t(T) * nq * hd, seed + 5, -2, 2);
  const float scale = 1.0f / std::sqrt(float(hd));

  KvCacheSpec spec{1, num_blocks, bs, nk, hd};
  auto rc = ref.CreateKvCache(spec);
  AttentionBatch hb;
  hb.num_tokens = H;
  hb.slot_mapping = hist_slots.data();
  AttentionBatch b;
  b.num_seqs = static_cast<int>(seqs.size());
  b.num_tokens = T;
  b.max_blocks_per_seq = max_blocks;
  b.max_query_len = max_q;
  b.max_context_len = max_ctx;
  b.query_start = qs.data();
  b.context_lens = ctxs.data();
  b.block_tables = tables.data();
  b.slot_mapping = slots.data();
  b.positions = pos.data();
  if (H > 0) ref.WriteKv(**rc, 0, hk.data(), hv.data(), hb);
  ref.WriteKv(**rc, 0, k.data(), v.data(), b);
  std::vector<float> want(q.size());
  ref.Attention(**rc, 0, q.data(), b, nq, scale, want.data());

  const size_t cache_elems = size_t(num_blocks) * bs * kvw;
  const int dev_dtype = static_cast<int>(kv_dtype);
  std::vector<char> kc(cache_elems * DTypeSize(kv_dtype), 0), vc(cache_elems * DTypeSize(kv_dtype), 0);
  if (H > 0) {
    cuda::LaunchWriteKv(hk.data(), hv.data(), hist_slots.data(), H, kvw, dev_dtype, kc.data(), vc.data(), nullptr);
  }
  cuda::LaunchWriteKv(k.data(), v.data(), slots.data(), T, kvw, dev_dtype, kc.data(), vc.data(), nullptr);
  std::vector<float> got(q.size(), NAN);
  cuda::PagedAttentionParams p;
  p.q = q.data();
  p.out = got.data();
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  p.kv_dtype = dev_dtype;
  p.query_start = qs.data();
  p.block_tables = tables.data();
  p.positions = pos.data();
  p.num_seqs = b.num_seqs;
  p.max_blocks_per_seq = max_blocks;
  p.max_query_len = max_q;
  p.max_context_len = max_ctx;
  p.nq = nq;
  p.nk = nk;
  p.head_dim = hd;
  p.block_size = bs;
  p.scale = scale;
  std::vector<float> scratch(std::max<int64_t>(cuda::DecodeScratchFloats(p), 1), NAN);
  p.scratch = scratch.data();
  cuda::LaunchPagedAttention(p, nullptr);
  const std::string what = std::string("attention ") + DTypeName(kv_dtype) + " nq=" + std::to_string(nq) +
                           " nk=" + std::to_string(nk) + " hd=" + std::to_string(hd) + " bs=" + std::to_string(bs);
  // Decode tokens and the fp32 prefill kernel: float32 arithmetic. Prefill chunks on tensor cores round
  // q and the softmax weights to bf16 (FlashAttention-2's precision): relative 2^-9 on each, so a
  // bf16 tolerance against the float64 reference.
  const bool mma = cuda::PrefillAttentionUsesMma(p);
  std::vector<float> got_d, want_d, got_p, want_p;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const bool prefill = seqs[i].query > 1;
    const size_t lo = size_t(qs[i]) * nq * hd, hi = size_t(qs[i + 1]) * nq * hd;
    auto& g = prefill && mma ? got_p : got_d;
    auto& w = prefill && mma ? want_p : want_d;
    g.insert(g.end(), got.begin() + lo, got.begin() + hi);
    w.insert(w.end(), want.begin() + lo, want.begin() + hi);
  }
  Check(got_d, want_d, 2e-5, 2e-4, what);
  if (!got_p.empty()) Check(got_p, want_p, 1e-2, 1e-2, what + " prefill on tensor cores");
}

}  // namespace
}  // namespace tpserve::kernels

// With an argument, runs only the groups whose name contains it (elementwise, gemv, topk, mma, rope,
// attention): bash tests/cuda_emu/run_emu_check.sh rope
int main(int argc, char** argv) {
  using namespace tpserve::kernels;
  const std::string only = argc > 1 ? argv[1] : "";
  auto run = [&](const char* group) { return only.empty() || std::string(group).find(only) != std::string::npos; };
  auto ref = CreateReferenceBackend();
  if (run("elementwise")) CheckElementwise(*ref);
  if (run("gemv")) {
    CheckGemv(*ref);
    CheckGemvInt8(*ref);
  }
  if (run("topk")) CheckTopK();
  if (run("mma")) CheckMmaPrimitive();
  if (run("rope")) {
    CheckRopeWriteKv(*ref, tpserve::DType::kF32);
    CheckRopeWriteKv(*ref, tpserve::DType::kBF16);
  }
  if (run("attention")) {
    // Prefill on tensor cores at 13B head shapes (128 dims, 40 q heads; 40 kv heads and GQA 40 / 8), odd
    // chunk lengths, chunks after a cached prefix (offsets not multiples of a tile), a chunk longer than
    // one 64-query tile, beside decodes in the same step.
    const std::vector<Seq> chunks = {{0, 67}, {45, 19}, {130, 3}, {300, 1}, {7, 2}};
    CheckAttention(*ref, 40, 40, 128, 16, chunks, 21);
    CheckAttention(*ref, 40, 8, 128, 16, chunks, 22);
    CheckAttention(*ref, 4, 2, 80, 8, {{0, 33}, {70, 5}, {17, 1}}, 23);  // head_dim 80: 5 k-steps of 16
    CheckAttention(*ref, 2, 1, 256, 16, {{0, 40}, {33, 9}}, 24);         // head_dim 256: 32-key tiles
    const std::vector<Seq> mixed = {{0, 37}, {40, 5}, {600, 1}, {5, 1}, {0, 2}, {1100, 1}};
    CheckAttention(*ref, 4, 2, 40, 16, mixed, 7);
    CheckAttention(*ref, 2, 1, 128, 8, mixed, 8);
    CheckAttention(*ref, 2, 2, 8, 4, {{0, 20}, {3, 1}}, 9);
    CheckAttention(*ref, 4, 2, 40, 16, mixed, 10, tpserve::DType::kF32);
    // head_dim without 16-byte vectors (bf16 36, float32 6): the element-wise decode path.
    const std::vector<Seq> short_mixed = {{0, 19}, {300, 1}, {5, 1}};
    CheckAttention(*ref, 4, 2, 36, 16, short_mixed, 11);
    CheckAttention(*ref, 2, 1, 6, 8, short_mixed, 12, tpserve::DType::kF32);
  }
  std::printf("%s: %d failure(s)\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}
