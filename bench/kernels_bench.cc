// kernels-bench: CPU backend matmul speed per ISA and weight dtype against limits measured in the same
// run — a multi-threaded streaming-read probe (GB/s) and an FMA / vdpbf16ps / AMX peak (GFLOP/s). Each row
// names the peak its kernel runs against (dpbf16, amx, fma512, fma256) and gives % of bandwidth, % of that
// peak and % of the roofline, so a regression on one ISA shows when another machine runs the suite.
//   kernels-bench [--isa=all|amx|avx512|avx2|scalar] [--threads=N] [--dtypes=f32,bf16,f16] [--m=1,16,512]
//                 [--shapes=5120x5120,...] [--min_time=0.3] [--json=FILE] [--probe_only] [--rotate_gib=1]
//                 [--cpu_time] [--pack_weights=false]
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/dashed_flags.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, isa, "all", "all, amx, avx512, avx2 or scalar");
ABSL_FLAG(int, threads, 0, "CPU backend threads (0 = all cores)");
ABSL_FLAG(std::string, dtypes, "f32,bf16,f16", "weight dtypes: f32, bf16, f16, i8 (int8 with per-row scales)");
ABSL_FLAG(std::string, m, "1,16,512", "rows of x (tokens)");
ABSL_FLAG(std::string, shapes, "5120x5120,13824x5120,5120x13824,2048x2048,5504x2048",
          "weight shapes out x in");
ABSL_FLAG(double, min_time, 0.3, "seconds per measurement (at least 2 timed runs)");
ABSL_FLAG(bool, scalar_prefill, false, "also time m >= 64 on the scalar ISA (slow)");
ABSL_FLAG(std::string, json, "", "write results to this JSON file");
ABSL_FLAG(bool, probe_only, false, "only measure read bandwidth and compute peaks (seconds), then exit");
ABSL_FLAG(bool, cpu_time, false,
          "time with the CPU clock of the thread doing the work instead of the wall clock (only with --threads=1): "
          "on a machine shared with other jobs this leaves out the time the bench was not running");
ABSL_FLAG(bool, pack_weights, true,
          "let the backend repack weights at load as a model does (Backend::PackMatmulWeight); false times "
          "the row-major kernels");
ABSL_FLAG(double, rotate_gib, 1.0,
          "keep copies of each weight totalling at least this many GiB (up to 64 copies) and use the next one on "
          "every call, so a weight smaller than the last-level cache is still read from memory (0 = one copy)");

namespace tpserve::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// This thread's CPU time in seconds (--cpu_time).
double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Seconds fn() took: wall clock, or with --cpu_time this thread's CPU time.
template <class Fn>
double TimeIt(Fn fn) {
  if (absl::GetFlag(FLAGS_cpu_time)) {
    const double t0 = ThreadCpuSeconds();
    fn();
    return ThreadCpuSeconds() - t0;
  }
  const auto t0 = Clock::now();
  fn();
  return Seconds(t0, Clock::now());
}

// Runs fn(thread) on `threads` threads at once and returns the wall time of the slowest (with --cpu_time
// and one thread, that thread's CPU time).
template <class Fn>
double RunOnThreads(int threads, Fn fn) {
  if (threads == 1 && absl::GetFlag(FLAGS_cpu_time)) {
    double s = 0;
    std::thread t([&] { s = TimeIt([&] { fn(0); }); });
    t.join();
    return s;
  }
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) {
      }
      fn(t);
    });
  }
  while (ready.load() != threads) {
  }
  const auto t0 = Clock::now();
  go.store(true);
  for (auto& t : ts) t.join();
  return Seconds(t0, Clock::now());
}

// Streaming read of a buffer much larger than the caches, split across threads; best of 5 passes.
// Vector loads with independent accumulators, so the probe is limited by memory, not by the core's
// load/add throughput (a scalar 8-byte loop tops out near 16 B/cycle and under-reports a fast system).
__attribute__((target("avx2"))) uint64_t SumRange256(const uint64_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  uint64_t out[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), s);
  uint64_t r = out[0] + out[1] + out[2] + out[3];
  for (; i < n; ++i) r += p[i];
  return r;
}

uint64_t SumRangeScalar(const uint64_t* p, size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += p[i];
    a1 += p[i + 1];
    a2 += p[i + 2];
    a3 += p[i + 3];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3;
}

double MeasureReadGBps(int threads) {
  const size_t bytes = size_t{1} << 30;
  const size_t n = bytes / 8;
  // Huge pages, as the CPU backend asks for its weights: the probe measures memory, not the TLB.
  auto* buf = static_cast<uint64_t*>(std::aligned_alloc(size_t{2} << 20, bytes));
  madvise(buf, bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  const bool avx2 = __builtin_cpu_supports("avx2");
  std::vector<uint64_t> sink(threads * 8);
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const double s = RunOnThreads(threads, [&](int t) {
      // 64-byte aligned chunk bounds.
      const size_t b = n * t / threads / 8 * 8, e = t + 1 == threads ? n : n * (t + 1) / threads / 8 * 8;
      sink[t * 8] = avx2 ? SumRange256(buf + b, e - b) : SumRangeScalar(buf + b, e - b);
    });
    best = std::max(best, bytes / s / 1e9);
  }
  std::free(buf);
  return best;
}

// Peak loops: independent accumulators keep every pipe busy. The target-attributed loops are plain
// functions (a lambda would not inherit the target). GFLOP/s counts 2 per multiply-add.
constexpr int64_t kPeakIters = 2000000;

__attribute__((target("avx512f"))) float FmaLoop512() {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (int64_t it = 0; it < kPeakIters; ++it) {
#pragma GCC unroll 24  // keep the accumulators in registers
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < 24; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) float FmaLoop256() {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t it = 0; it < kPeakIters; ++it) {
#pragma GCC unroll 24  // keep the accumulators in registers
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, sum);
  return out[0];
}

// vdpbf16ps: 16 lanes x 2 bf16 products per instruction = 64 flops.
__attribute__((target("avx512f,avx512bf16"))) float DpLoop() {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_setzero_ps();
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3c00);
  for (int64_t it = 0; it < kPeakIters; ++it) {
#pragma GCC unroll 24  // keep the accumulators in registers
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < 24; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

// AMX tdpbf16ps: a 16 x 16 x 32 bf16 tile product per instruction = 16384 flops; four independent
// accumulators, operands loaded once (the calling thread must hold the tile permission: kAmx detected).
constexpr int64_t kAmxIters = kPeakIters / 16;

__attribute__((target("amx-tile,amx-bf16"))) float AmxLoop() {
  struct alignas(64) {
    uint8_t palette, start, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } cfg = {};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  alignas(64) static const uint16_t ones[16 * 32] = {};
  alignas(64) float out[16 * 16];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (int64_t it = 0; it < kAmxIters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

// Best of several short runs, so a run that shared its core with something else does not count.
double PeakGflops(int threads, float (*loop)(), double flops_per_iter, int64_t iters = kPeakIters) {
  std::vector<float> sink(threads * 16);
  double best = 0;
  for (int rep = 0; rep < 15; ++rep) {
    const double s = RunOnThreads(threads, [&](int t) { sink[t * 16] = loop(); });
    best = std::max(best, double(threads) * iters * flops_per_iter / s / 1e9);
  }
  return best;
}

// /proc/cpuinfo's first "model name" with its family and model numbers (a virtual machine may show only
// "AMD EPYC"; family 25 is Zen 3/4, 26 Zen 5), or "unknown".
std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name, family, model;
  auto value = [&] {
    const size_t colon = line.find(':');
    const size_t start = colon == std::string::npos ? std::string::npos : line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? std::string() : line.substr(start);
  };
  while (std::getline(in, line) && !line.empty()) {
    if (line.rfind("model name", 0) == 0) name = value();
    if (line.rfind("cpu family", 0) == 0) family = value();
    if (line.rfind("model\t", 0) == 0 || line.rfind("model :", 0) == 0) model = value();
  }
  if (name.empty()) return "unknown";
  return family.empty() ? name : name + " (family " + family + " model " + model + ")";
}

std::vector<int64_t> ParseInts(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v;
    if (absl::SimpleAtoi(part, &v)) out.push_back(v);
  }
  return out;
}

int Main() {
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  if (absl::GetFlag(FLAGS_cpu_time) && threads != 1) {
    std::fprintf(stderr, "--cpu_time needs --threads=1 (the other threads' time is not on this clock)\n");
    return 2;
  }
  __builtin_cpu_init();
  const bool has_amx = DetectCpuIsa() == CpuIsa::kAmx;
  const bool has512 = has_amx || DetectCpuIsa() == CpuIsa::kAvx512;
  const bool has_bf16 = has512 && __builtin_cpu_supports("avx512bf16");
  const bool has_avx2 = DetectCpuIsa() != CpuIsa::kScalar;

  nlohmann::json report;
  const double read_gbps = MeasureReadGBps(threads);
  const double fma_peak = has512 ? PeakGflops(threads, &FmaLoop512, 24 * 16 * 2) : 0.0;
  const double fma256_peak = has_avx2 ? PeakGflops(threads, &FmaLoop256, 12 * 8 * 2) : 0.0;
  const double dp_peak = has_bf16 ? PeakGflops(threads, &DpLoop, 24 * 64) : 0.0;
  const double amx_peak = has_amx ? PeakGflops(threads, &AmxLoop, 4 * 16384, kAmxIters) : 0.0;
  const std::string cpu_model = CpuModelName();
  std::printf("cpu: %s  isa: %s%s%s\n", cpu_model.c_str(), CpuIsaName(DetectCpuIsa()), has_bf16 ? " +avx512_bf16" : "",
              absl::GetFlag(FLAGS_cpu_time) ? "  (timed by thread CPU clock)" : "");
  report["cpu_model"] = cpu_model;
  report["cpu_isa"] = CpuIsaName(DetectCpuIsa());
  report["avx512_bf16"] = has_bf16;
  std::printf(
      "threads %d  read bandwidth %.1f GB/s  FMA peak %.0f (zmm) / %.0f (ymm) GFLOP/s  dpbf16 peak %.0f GFLOP/s"
      "  AMX bf16 peak %.0f GFLOP/s\n",
      threads, read_gbps, fma_peak, fma256_peak, dp_peak, amx_peak);
  report["threads"] = threads;
  report["read_gbps"] = read_gbps;
  report["fma_peak_gflops"] = fma_peak;
  report["fma256_peak_gflops"] = fma256_peak;
  report["dpbf16_peak_gflops"] = dp_peak;
  report["amx_bf16_peak_gflops"] = amx_peak;
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (absl::GetFlag(FLAGS_probe_only)) {
    if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
    return 0;
  }

  std::vector<CpuIsa> isas;
  const std::string isa_flag = absl::GetFlag(FLAGS_isa);
  for (CpuIsa isa : {CpuIsa::kAmx, CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kScalar}) {
    if (isa_flag == "all" || isa_flag == CpuIsaName(isa)) isas.push_back(isa);
  }
  std::vector<DType> dtypes;
  for (absl::string_view d : absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',', absl::SkipEmpty())) {
    auto dt = ParseDType(d == "f32" ? "F32" : d == "bf16" ? "BF16" : d == "f16" ? "F16" : d);
    if (dt.ok()) dtypes.push_back(*dt);
    if (d == "i8" || d == "int8") dtypes.push_back(DType::kI8);  // --quantization int8 weights
  }
  const std::vector<int64_t> ms = ParseInts(absl::GetFlag(FLAGS_m));
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',', absl::SkipEmpty())) {
    std::vector<std::string> nk = absl::StrSplit(s, 'x');
    int64_t n, k;
    if (nk.size() == 2 && absl::SimpleAtoi(nk[0], &n) && absl::SimpleAtoi(nk[1], &k)) shapes.push_back({n, k});
  }
  const int64_t max_m = ms.empty() ? 1 : *std::max_element(ms.begin(), ms.end());

  // Per row: % of the read bandwidth, % of the compute peak of the instruction the kernel runs on (named in
  // `peak`), and % of the roofline: the larger of weight-streaming time at the probe's bandwidth and compute
  // time at that peak, over the measured time (100% = as fast as either limit allows).
  std::printf("%-18s %-9s %-12s %5s %10s %9s %7s %9s %7s %-7s %6s\n", "backend", "dtype", "shape", "m", "best ms",
              "GB/s", "%bw", "GFLOP/s", "%peak", "peak", "%roof");
  for (CpuIsa isa : isas) {
    auto be_or = CreateCpuBackend(CpuBackendOptions{threads, isa});
    if (!be_or.ok()) {
      std::printf("%s: skipped (%s)\n", CpuIsaName(isa), std::string(be_or.status().message()).c_str());
      continue;
    }
    auto& be = *be_or;
    for (DType dt : dtypes) {
      for (auto [n, k] : shapes) {
        const size_t wbytes = size_t(n) * k * DTypeSize(dt);
        std::vector<uint8_t> w(wbytes);
        for (size_t i = 0; i < wbytes / 2; ++i) {
          // Small finite values in every dtype (bf16/f16 ~ +-0.01..0.5; f32 words likewise).
          const float v = 0.01f + 0.49f * float((i * 2654435761u) % 1000) / 1000.0f * ((i & 1) ? -1 : 1);
          const uint16_t h = dt == DType::kF16 ? F32ToF16(v) : F32ToBF16(v);
          std::memcpy(&w[i * 2], &h, 2);
        }
        if (dt == DType::kF32) {
          for (size_t i = 0; i < wbytes / 4; ++i) {
            const float v = 0.01f + 0.49f * float((i * 2654435761u) % 1000) / 1000.0f;
            std::memcpy(&w[i * 4], &v, 4);
          }
        }
        if (dt == DType::kI8) {
          for (size_t i = 0; i < wbytes; ++i) w[i] = static_cast<uint8_t>(static_cast<int>((i * 2654435761u) % 255) - 127);
        }
        const std::vector<float> scales(n, 1.0f / 127.0f);  // kI8 only: per-row scales
        // In backend memory, as the model keeps its weights (huge pages on the CPU backend). A model's decode
        // step reads gigabytes, far more than any last-level cache; one copy of a single matrix read again and
        // again would sit in a large L3 (hundreds of MiB on some servers) and report more than memory can give.
        const double rotate = absl::GetFlag(FLAGS_rotate_gib) * double(1 << 30);
        const int copies = static_cast<int>(std::min<double>(64, std::max<double>(1, std::ceil(rotate / wbytes))));
        // Each copy in the layout the backend's Matmul reads, as a model loads it (PackMatmulWeight).
        std::vector<WeightView> wmem(copies);
        for (WeightView& v : wmem) {
          void* p = be->Alloc(wbytes);
          be->Upload(p, w.data(), wbytes);
          v = WeightView{p, dt, n, k};
          if (dt == DType::kI8) v.scales = scales.data();
          if (absl::GetFlag(FLAGS_pack_weights)) be->PackMatmulWeight(&v);
        }
        std::vector<uint8_t>().swap(w);
        int next = 0;
        auto view = [&] { return wmem[next++ % copies]; };
        std::vector<float> x(max_m * k), y(max_m * n);
        for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 17) - 8) / 8.0f;
        for (int64_t m : ms) {
          if (isa == CpuIsa::kScalar && m >= 64 && !absl::GetFlag(FLAGS_scalar_prefill)) continue;
          for (int c = 0; c < copies; ++c) be->Matmul(x.data(), m, view(), y.data());  // warm-up, page in
          std::vector<double> times;
          const auto start = Clock::now();
          while (times.size() < 2 || (Seconds(start, Clock::now()) < absl::GetFlag(FLAGS_min_time) && times.size() < 1000)) {
            times.push_back(TimeIt([&] { be->Matmul(x.data(), m, view(), y.data()); }));
          }
          std::sort(times.begin(), times.end());
          // Best of the runs: the build machine is shared, and the minimum is the least disturbed run.
          const double t = times.front();
          const double median = times[times.size() / 2];
          const double bytes = double(wbytes) + double(m) * k * 4 + double(m) * n * 4;
          const double gbps = bytes / t / 1e9;
          const double gflops = 2.0 * m * n * k / t / 1e9;
          // int8 weights on avx512-bf16 (and AMX, which routes int8 there) are widened to bf16 for vdpbf16ps.
          const bool dot_bf16 = (dt == DType::kBF16 || dt == DType::kI8) &&
                                (be->name().find("bf16") != std::string::npos ||
                                 (dt == DType::kI8 && isa == CpuIsa::kAmx));
          const bool amx_bf16 = dt == DType::kBF16 && isa == CpuIsa::kAmx && k % 32 == 0;
          const double peak = amx_bf16                 ? amx_peak
                              : dot_bf16               ? dp_peak
                              : isa == CpuIsa::kAvx512 ? fma_peak
                              : isa == CpuIsa::kAvx2   ? fma256_peak
                                                       : 0.0;  // baseline code: no meaningful peak
          const char* peak_name = amx_bf16                 ? "amx"
                                  : dot_bf16               ? "dpbf16"
                                  : isa == CpuIsa::kAvx512 ? "fma512"
                                  : isa == CpuIsa::kAvx2   ? "fma256"
                                                           : "-";
          const double floor_s =
              std::max(double(wbytes) / (read_gbps * 1e9), peak > 0 ? 2.0 * m * n * k / (peak * 1e9) : 0.0);
          const std::string shape = std::to_string(n) + "x" + std::to_string(k);
          std::printf("%-18s %-9s %-12s %5lld %10.3f %9.1f %6.0f%% %9.1f %6.0f%% %-7s %5.0f%%\n", be->name().c_str(),
                      DTypeName(dt), shape.c_str(), static_cast<long long>(m), t * 1e3, gbps, 100.0 * gbps / read_gbps,
                      gflops, peak > 0 ? 100.0 * gflops / peak : 0.0, peak_name, 100.0 * floor_s / t);
          std::fflush(stdout);
          report["results"].push_back({{"backend", be->name()}, {"dtype", DTypeName(dt)}, {"n", n}, {"k", k},
                                       {"m", m}, {"ms", t * 1e3}, {"median_ms", median * 1e3}, {"gbps", gbps},
                                       {"bw_fraction", gbps / read_gbps}, {"gflops", gflops},
                                       {"peak_gflops", peak}, {"peak_fraction", peak > 0 ? gflops / peak : 0.0},
                                       {"peak_kind", peak_name}, {"roofline_fraction", floor_s / t}});
        }
        for (const WeightView& v : wmem) be->Free(const_cast<void*>(v.data));
      }
    }
  }
  if (!json_path.empty()) {
    std::ofstream(json_path) << report.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace tpserve::kernels

int main(int argc, char** argv) {
  tpserve::bench::ParseDashedCommandLine(argc, argv);
  return tpserve::kernels::Main();
}
