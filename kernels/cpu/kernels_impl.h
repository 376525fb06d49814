// ISA-generic CPU kernels, written once over a vector-traits type V and instantiated in each ISA
// translation unit (kernels_scalar.cc, kernels_avx2.cc, kernels_avx512.cc) after it defines V.
//
// Everything here has internal linkage (anonymous namespace) and uses no std:: templates: an inline or
// template function emitted by two TUs built with different -m flags would be merged by the linker, and
// the AVX-512 copy could end up running on the scalar path.
//
// V provides: T, L (lanes), Zero, Set1, Load, Store, LoadN/StoreN (first n < L lanes, rest zero),
// LoadBF16/LoadF16 (L weights -> f32), Add, Sub, Mul, Div, Max, Fma(a, b, c) = a*b + c,
// ReduceAdd (a fixed tree), ReduceMax, Exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace tpserve::kernels::cpu {
namespace {

inline float Bf16Bits(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline int64_t MinI(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t MaxI(int64_t a, int64_t b) { return a > b ? a : b; }

// Weight loads by dtype: L elements, or the first n (< L) zero-padded.
template <class V, DType DT>
struct WLoad;
template <class V>
struct WLoad<V, DType::kF32> {
  using E = float;
  static typename V::T Full(const E* p) { return V::Load(p); }
  static typename V::T Part(const E* p, int n) { return V::LoadN(p, n); }
};
template <class V>
struct WLoad<V, DType::kBF16> {
  using E = uint16_t;
  static typename V::T Full(const E* p) { return V::LoadBF16(p); }
  static typename V::T Part(const E* p, int n) {
    float buf[V::L] = {};
    for (int i = 0; i < n; ++i) buf[i] = Bf16Bits(p[i]);
    return V::Load(buf);
  }
};
template <class V>
struct WLoad<V, DType::kF16> {
  using E = uint16_t;
  static typename V::T Full(const E* p) { return V::LoadF16(p); }
  static typename V::T Part(const E* p, int n) {
    uint16_t buf[V::L] = {};
    for (int i = 0; i < n; ++i) buf[i] = p[i];
    return V::LoadF16(buf);
  }
};

// ---- matmul ----
// Every y[r, o] is: one L-lane accumulator, Fma over k in order (full chunks, then one zero-padded tail
// chunk), then V::ReduceAdd. Tile shape only decides how many elements run side by side, so the value
// never depends on m, the tile or the thread (batch invariance).
using TileFn = void (*)(const MatmulJob& job, int64_t m0, int64_t n0);

template <class V, DType DT>
struct FmaTile {
  template <int MR, int NR>
  static void Run(const MatmulJob& job, int64_t m0, int64_t n0) {
    using E = typename WLoad<V, DT>::E;
    const int64_t k = job.k;
    const float* x = job.x + m0 * k;
    const E* w = static_cast<const E*>(job.w) + n0 * k;
    typename V::T acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = V::Zero();
    int64_t kk = 0;
    for (; kk + V::L <= k; kk += V::L) {
      typename V::T xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = V::Load(x + i * k + kk);
      for (int j = 0; j < NR; ++j) {
        const typename V::T wv = WLoad<V, DT>::Full(w + j * k + kk);
        for (int i = 0; i < MR; ++i) acc[i][j] = V::Fma(xv[i], wv, acc[i][j]);
      }
    }
    if (kk < k) {
      const int rest = static_cast<int>(k - kk);
      typename V::T xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = V::LoadN(x + i * k + kk, rest);
      for (int j = 0; j < NR; ++j) {
        const typename V::T wv = WLoad<V, DT>::Part(w + j * k + kk, rest);
        for (int i = 0; i < MR; ++i) acc[i][j] = V::Fma(xv[i], wv, acc[i][j]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) job.y[(m0 + i) * job.n + n0 + j] = V::ReduceAdd(acc[i][j]);
  }
};

// table[(mr - 1) * NR + (nr - 1)] = Tile::Run<mr, nr>
template <class Tile, int MR, int NR, int I = 0>
void FillTiles(TileFn* table) {
  if constexpr (I < MR * NR) {
    table[I] = &Tile::template Run<I / NR + 1, I % NR + 1>;
    FillTiles<Tile, MR, NR, I + 1>(table);
  }
}

// Output columns [n_begin, n_end) for all rows: blocks of W rows sized to stay in L2 while every
// MR-row strip of x passes over them.
template <class Tile, int MR, int NR>
void MatmulDriver(const MatmulJob& job, int64_t n_begin, int64_t n_end, int64_t weight_elem_bytes) {
  TileFn table[MR * NR];
  FillTiles<Tile, MR, NR>(table);
  const int64_t row_bytes = job.k * weight_elem_bytes;
  int64_t nb = (256 * 1024) / (row_bytes > 0 ? row_bytes : 1);
  nb = nb < NR ? NR : nb / NR * NR;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += nb) {
    const int64_t n1 = MinI(n_end, n0 + nb);
    for (int64_t m0 = 0; m0 < job.m; m0 += MR) {
      const int mr = static_cast<int>(MinI(MR, job.m - m0));
      for (int64_t j = n0; j < n1; j += NR) {
        const int nr = static_cast<int>(MinI(NR, n1 - j));
        table[(mr - 1) * NR + (nr - 1)](job, m0, j);
      }
    }
  }
}

template <class V, int MR, int NR>
void MatmulFma(const MatmulJob& job, int64_t n_begin, int64_t n_end) {
  switch (job.wdt) {
    case DType::kF32: return MatmulDriver<FmaTile<V, DType::kF32>, MR, NR>(job, n_begin, n_end, 4);
    case DType::kBF16: return MatmulDriver<FmaTile<V, DType::kBF16>, MR, NR>(job, n_begin, n_end, 2);
    case DType::kF16: return MatmulDriver<FmaTile<V, DType::kF16>, MR, NR>(job, n_begin, n_end, 2);
  }
}

// ---- elementwise and row ops ----

template <class V, DType DT>
void ConvertRowT(const void* src, int64_t n, float* out) {
  using E = typename WLoad<V, DT>::E;
  const E* s = static_cast<const E*>(src);
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) V::Store(out + i, WLoad<V, DT>::Full(s + i));
  if (i < n) V::StoreN(out + i, WLoad<V, DT>::Part(s + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

template <class V>
void ConvertRow(const void* src, DType dt, int64_t n, float* out) {
  switch (dt) {
    case DType::kF32: return ConvertRowT<V, DType::kF32>(src, n, out);
    case DType::kBF16: return ConvertRowT<V, DType::kBF16>(src, n, out);
    case DType::kF16: return ConvertRowT<V, DType::kF16>(src, n, out);
  }
}

template <class V>
float SumSquares(const float* x, int64_t d) {
  typename V::T acc = V::Zero();
  int64_t i = 0;
  for (; i + V::L <= d; i += V::L) {
    const typename V::T v = V::Load(x + i);
    acc = V::Fma(v, v, acc);
  }
  if (i < d) {
    const typename V::T v = V::LoadN(x + i, static_cast<int>(d - i));
    acc = V::Fma(v, v, acc);
  }
  return V::ReduceAdd(acc);
}

template <class V, DType DT>
void ScaleByWeight(const float* x, int64_t d, const void* w, float inv, float* out) {
  using E = typename WLoad<V, DT>::E;
  const E* wp = static_cast<const E*>(w);
  const typename V::T s = V::Set1(inv);
  int64_t i = 0;
  for (; i + V::L <= d; i += V::L) {
    V::Store(out + i, V::Mul(V::Mul(V::Load(x + i), s), WLoad<V, DT>::Full(wp + i)));
  }
  if (i < d) {
    const int r = static_cast<int>(d - i);
    V::StoreN(out + i, V::Mul(V::Mul(V::LoadN(x + i, r), s), WLoad<V, DT>::Part(wp + i, r)), r);
  }
}

template <class V>
void RmsNormRow(const float* x, int64_t d, const void* w, DType wdt, float eps, float* out) {
  const double ms = static_cast<double>(SumSquares<V>(x, d)) / static_cast<double>(d);
  const float inv = static_cast<float>(1.0 / std::sqrt(ms + eps));
  switch (wdt) {
    case DType::kF32: return ScaleByWeight<V, DType::kF32>(x, d, w, inv, out);
    case DType::kBF16: return ScaleByWeight<V, DType::kBF16>(x, d, w, inv, out);
    case DType::kF16: return ScaleByWeight<V, DType::kF16>(x, d, w, inv, out);
  }
}

template <class V>
void AddRange(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) V::Store(y + i, V::Add(V::Load(y + i), V::Load(x + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::StoreN(y + i, V::Add(V::LoadN(y + i, r), V::LoadN(x + i, r)), r);
  }
}

template <class V>
void AddRmsNormRow(float* residual, const float* x, int64_t d, const void* w, DType wdt, float eps,
                   float* out) {
  AddRange<V>(residual, x, d);
  RmsNormRow<V>(residual, d, w, wdt, eps, out);
}

template <class V>
typename V::T SiluMulV(typename V::T g, typename V::T u) {
  const typename V::T one = V::Set1(1.0f);
  const typename V::T e = V::Exp(V::Sub(V::Zero(), g));
  return V::Mul(V::Div(g, V::Add(one, e)), u);
}

template <class V>
void SiluMul(const float* g, const float* u, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) V::Store(out + i, SiluMulV<V>(V::Load(g + i), V::Load(u + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::StoreN(out + i, SiluMulV<V>(V::LoadN(g + i, r), V::LoadN(u + i, r)), r);
  }
}

// Mul then Sub/Add (never fused) so the result matches the reference's float32 formula exactly.
template <class V>
void Rope(float* x, int heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < heads; ++h) {
    float* a = x + static_cast<int64_t>(h) * head_dim;
    float* b = a + half;
    for (int i = 0; i < half; i += V::L) {
      const int r = half - i < V::L ? half - i : V::L;
      const typename V::T x0 = r == V::L ? V::Load(a + i) : V::LoadN(a + i, r);
      const typename V::T x1 = r == V::L ? V::Load(b + i) : V::LoadN(b + i, r);
      const typename V::T c = r == V::L ? V::Load(cos + i) : V::LoadN(cos + i, r);
      const typename V::T s = r == V::L ? V::Load(sin + i) : V::LoadN(sin + i, r);
      const typename V::T o0 = V::Sub(V::Mul(x0, c), V::Mul(x1, s));
      const typename V::T o1 = V::Add(V::Mul(x1, c), V::Mul(x0, s));
      if (r == V::L) {
        V::Store(a + i, o0);
        V::Store(b + i, o1);
      } else {
        V::StoreN(a + i, o0, r);
        V::StoreN(b + i, o1, r);
      }
    }
  }
}

// ---- paged attention: online softmax over key chunks ----

// a . b where b is a K row in the cache's dtype (WLoad widens bf16; float32 loads as is).
template <class V, DType DT>
float Dot(const float* a, const typename WLoad<V, DT>::E* b, int n) {
  typename V::T acc = V::Zero();
  int i = 0;
  for (; i + V::L <= n; i += V::L) acc = V::Fma(V::Load(a + i), WLoad<V, DT>::Full(b + i), acc);
  if (i < n) acc = V::Fma(V::LoadN(a + i, n - i), WLoad<V, DT>::Part(b + i, n - i), acc);
  return V::ReduceAdd(acc);
}

// Value update of one head over one key chunk, with the running output in registers for the whole chunk:
//   acc = acc * scale + p[0] * v[0];  then acc += p[j] * v[j] for j = 1 .. cn-1 (one Fma each, in j order).
// The same operations per element as one ScaleAxpy then cn-1 Axpy passes over memory, without the
// store-to-load chain those put between consecutive keys. acc: [n]; vrows[j]: the KV head's V row of key j.
template <class V, DType DT>
void ValueChunk(float* acc, float scale, const float* p, const typename WLoad<V, DT>::E* const* vrows, int cn,
                int n) {
  constexpr int kRegs = 8;  // accumulator vectors held at once (8 zmm = 128 floats; 8 ymm on AVX2)
  const typename V::T s = V::Set1(scale);
  int d0 = 0;
  for (; d0 + kRegs * V::L <= n; d0 += kRegs * V::L) {
    typename V::T r[kRegs];
    const typename V::T p0 = V::Set1(p[0]);
    for (int u = 0; u < kRegs; ++u) {
      r[u] = V::Fma(p0, WLoad<V, DT>::Full(vrows[0] + d0 + u * V::L), V::Mul(V::Load(acc + d0 + u * V::L), s));
    }
    for (int j = 1; j < cn; ++j) {
      const typename V::T pj = V::Set1(p[j]);
      for (int u = 0; u < kRegs; ++u) r[u] = V::Fma(pj, WLoad<V, DT>::Full(vrows[j] + d0 + u * V::L), r[u]);
    }
    for (int u = 0; u < kRegs; ++u) V::Store(acc + d0 + u * V::L, r[u]);
  }
  // Leftover vectors (head_dim not a multiple of kRegs * L), the last one possibly partial.
  for (; d0 < n; d0 += V::L) {
    const int r = n - d0 < V::L ? n - d0 : V::L;
    const bool full = r == V::L;
    auto vload = [&](int j) {
      return full ? WLoad<V, DT>::Full(vrows[j] + d0) : WLoad<V, DT>::Part(vrows[j] + d0, r);
    };
    typename V::T a = V::Fma(V::Set1(p[0]), vload(0), V::Mul(full ? V::Load(acc + d0) : V::LoadN(acc + d0, r), s));
    for (int j = 1; j < cn; ++j) a = V::Fma(V::Set1(p[j]), vload(j), a);
    if (full) {
      V::Store(acc + d0, a);
    } else {
      V::StoreN(acc + d0, a, r);
    }
  }
}

template <class V>
void ExpInPlace(float* x, int n) {
  int i = 0;
  for (; i + V::L <= n; i += V::L) V::Store(x + i, V::Exp(V::Load(x + i)));
  if (i < n) V::StoreN(x + i, V::Exp(V::LoadN(x + i, n - i)), n - i);
}

constexpr int kKeyChunk = 32;
constexpr int kKvPrefetchKeys = 16;  // keys ahead that a token's walk prefetches K and V rows

inline void PrefetchRow(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

// Keys are visited in fixed chunks of kKeyChunk positions from 0, so a token's result depends only on
// its query and its context — not on which other tokens share the call or the job. The job's tokens
// take each chunk in turn while its K/V rows are in L1.
template <class V, DType DT>
void AttentionT(const AttentionJob& job) {
  using E = typename WLoad<V, DT>::E;
  const int hd = job.head_dim, g = job.group, nt = job.tokens;
  float* scores = job.scratch;                                  // [g, kKeyChunk], one token at a time
  float* acc_all = scores + g * kKeyChunk;                      // per token [g, hd]
  float* max_all = acc_all + static_cast<int64_t>(nt) * g * hd;  // per token [g]
  float* sum_all = max_all + nt * g;                            // per token [g]
  int max_context = 0;
  for (int i = 0; i < nt; ++i) max_context = job.contexts[i] > max_context ? job.contexts[i] : max_context;
  for (int64_t e = 0; e < static_cast<int64_t>(nt) * g * hd; ++e) acc_all[e] = 0.0f;
  for (int e = 0; e < nt * g; ++e) {
    max_all[e] = -INFINITY;
    sum_all[e] = 0.0f;
  }
  const int64_t kv_row = static_cast<int64_t>(job.num_kv_heads) * hd;
  auto row_of = [&](const void* base, int p) {
    const int64_t block = job.block_table[p / job.block_size];
    return static_cast<const E*>(base) + (block * job.block_size + p % job.block_size) * kv_row +
           static_cast<int64_t>(job.kv_head) * hd;
  };
  const E* vrows[kKeyChunk];  // V rows of the chunk's keys, at this job's KV head
  for (int c0 = 0; c0 < max_context; c0 += kKeyChunk) {
    for (int i = 0; i < nt; ++i) {
      const int context = job.contexts[i];
      if (context <= c0) continue;
      const float* q = job.q + i * job.q_stride;
      float* acc = acc_all + static_cast<int64_t>(i) * g * hd;
      float* run_max = max_all + i * g;
      float* run_sum = sum_all + i * g;
      const int cn = context - c0 < kKeyChunk ? context - c0 : kKeyChunk;
      for (int j = 0; j < cn; ++j) {
        const E* kr = row_of(job.k_cache, c0 + j);
        vrows[j] = row_of(job.v_cache, c0 + j);
        // A decode token's K/V rows are used once and sit num_kv_heads * head_dim apart: too far for the
        // hardware prefetcher to follow, so the walk is memory-latency bound without this.
        if (c0 + j + kKvPrefetchKeys < context) {
          PrefetchRow(row_of(job.k_cache, c0 + j + kKvPrefetchKeys), hd * sizeof(E));
          PrefetchRow(row_of(job.v_cache, c0 + j + kKvPrefetchKeys), hd * sizeof(E));
        }
        for (int h = 0; h < g; ++h) scores[h * kKeyChunk + j] = Dot<V, DT>(q + h * hd, kr, hd) * job.scale;
      }
      for (int h = 0; h < g; ++h) {
        float* s = scores + h * kKeyChunk;
        float cmax = run_max[h];
        for (int j = 0; j < cn; ++j) cmax = s[j] > cmax ? s[j] : cmax;
        const float correction = std::exp(run_max[h] - cmax);  // 0 on the first chunk (exp(-inf))
        run_max[h] = cmax;
        for (int j = 0; j < cn; ++j) s[j] -= cmax;
        ExpInPlace<V>(s, cn);
        float sum = 0.0f;
        for (int j = 0; j < cn; ++j) sum += s[j];
        run_sum[h] = run_sum[h] * correction + sum;
        // The rescale of the running output rides on this chunk's first value update.
        ValueChunk<V, DT>(acc + h * hd, correction, s, vrows, cn, hd);
      }
    }
  }
  for (int i = 0; i < nt; ++i) {
    const float* acc = acc_all + static_cast<int64_t>(i) * g * hd;
    float* out = job.out + i * job.q_stride;
    for (int h = 0; h < g; ++h) {
      const float inv = 1.0f / sum_all[i * g + h];
      for (int d = 0; d < hd; ++d) out[h * hd + d] = acc[h * hd + d] * inv;
    }
  }
}

template <class V>
void Attention(const AttentionJob& job) {
  if (job.kv_dtype == DType::kBF16) return AttentionT<V, DType::kBF16>(job);
  AttentionT<V, DType::kF32>(job);
}

}  // namespace
}  // namespace tpserve::kernels::cpu
