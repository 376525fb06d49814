// The CPU backend against the reference backend, for every ISA this machine supports (kScalar, kAvx2,
// kAvx512, kAmx; others skip with a message) and weight dtypes F32/BF16/F16, on real Llama-2-13B sizes
// (5120, 13824, head_dim 128, 40 heads) and odd ones (5125, 13; m = 1, 3, 17, 64).
#include <cmath>
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/util/random.h"

namespace tpserve::kernels {
namespace {

// Uniform in [lo, hi) (tests/util/random.h): real-size weights (70M elements) need a fast generator.
std::vector<float> RandomVec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return testing::RandomFloats(n, seed, lo, hi);
}

// A weight stored in `dt`, made from float values (which it rounds).
struct HostWeight {
  DType dt;
  int64_t rows, cols;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  WeightView view() const {
    return WeightView{dt == DType::kF32 ? static_cast<const void*>(f32.data()) : half.data(), dt, rows, cols};
  }
};

HostWeight MakeWeight(DType dt, int64_t rows, int64_t cols, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  HostWeight w{dt, rows, cols, RandomVec(rows * cols, seed, lo, hi), {}};
  if (dt != DType::kF32) {
    w.half.resize(w.f32.size());
    for (size_t i = 0; i < w.f32.size(); ++i) w.half[i] = dt == DType::kBF16 ? F32ToBF16(w.f32[i]) : F32ToF16(w.f32[i]);
    w.f32.clear();
  }
  return w;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, double abs_tol, double rel_tol,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = abs_tol + rel_tol * std::fabs(want[i]);
    if (!(std::fabs(double(got[i]) - want[i]) <= tol)) {
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << " want " << want[i] << " tol " << tol;
      ++bad;
    }
  }
}

void ExpectBitwise(const float* a, const float* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      ADD_FAILURE() << what << " differs at " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
  }
}

class CpuOpsTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    auto be = CreateCpuBackend(CpuBackendOptions{2, GetParam()});
    if (!be.ok()) GTEST_SKIP() << CpuIsaName(GetParam()) << " not supported here: " << be.status();
    cpu_ = std::move(*be);
    ref_ = CreateReferenceBackend();
  }
  // The bf16-dot path rounds x to bf16, so its tolerance is looser.
  bool RoundsX(DType dt) const { return dt == DType::kBF16 && cpu_->name().find("bf16") != std::string::npos; }

  std::unique_ptr<Backend> cpu_, ref_;
};

void CheckMatmul(Backend& cpu, Backend& ref, DType dt, int64_t m, int64_t n, int64_t k) {
  const std::string what = std::string(cpu.name()) + " " + DTypeName(dt) + " " + std::to_string(m) + "x" +
                           std::to_string(n) + "x" + std::to_string(k);
  HostWeight w = MakeWeight(dt, n, k, uint32_t(n * 7 + k));
  auto x = RandomVec(m * k, uint32_t(m + k));
  std::vector<float> want(m * n), got(m * n, NAN);
  ref.Matmul(x.data(), m, w.view(), want.data());
  cpu.Matmul(x.data(), m, w.view(), got.data());
  // |y| ~ sqrt(k)/3; float32 accumulation error grows ~ sqrt(k); bf16-rounded x adds ~2⁻⁹ per term.
  const bool rounds_x = dt == DType::kBF16 && cpu.name().find("bf16") != std::string::npos;
  const double sk = std::sqrt(double(k));
  ExpectNear(got, want, rounds_x ? 4e-3 * sk : 2e-5 * sk, rounds_x ? 1e-2 : 1e-5, what);
  // The layout the backend repacks the weight into at load, where it has one (avx512-bf16: pair panels).
  HostWeight packed = w;
  WeightView pv = packed.view();
  if (cpu.PackMatmulWeight(&pv)) {
    std::fill(got.begin(), got.end(), NAN);
    cpu.Matmul(x.data(), m, pv, got.data());
    ExpectNear(got, want, rounds_x ? 4e-3 * sk : 2e-5 * sk, rounds_x ? 1e-2 : 1e-5, what + " repacked");
  }
}

TEST_P(CpuOpsTest, MatmulMatchesReferenceOddShapes) {
  struct Shape {
    int64_t m, n, k;
  };
  // k = 5120, 2048 and 64 take the AMX tiles (k % 32 == 0), with feature tails (13, 517 % 16) and partial
  // token blocks (m = 17, 33); the others the vdpbf16ps path.
  const Shape shapes[] = {{3, 517, 5125}, {17, 13, 5120}, {64, 96, 1000},  {1, 7, 13},
                          {5, 33, 31},    {2, 9, 1},      {33, 517, 2048}, {48, 80, 64}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape& s : shapes) CheckMatmul(*cpu_, *ref_, dt, s.m, s.n, s.k);
  }
}

// Real Llama-2-13B projections (decode, m = 1): each weight is generated once and checked on every
// supported ISA, which keeps this test fast.
TEST(CpuMatmul, RealSizesEveryIsa) {
  std::vector<std::unique_ptr<Backend>> cpus;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAmx}) {
    auto be = CreateCpuBackend(CpuBackendOptions{2, isa});
    if (be.ok()) cpus.push_back(std::move(*be));
  }
  auto ref = CreateReferenceBackend();
  struct Shape {
    int64_t n, k;
  };
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape& s : {Shape{5120, 5120}, Shape{13824, 5120}, Shape{5120, 13824}}) {
      HostWeight w = MakeWeight(dt, s.n, s.k, uint32_t(s.n + s.k));
      auto x = RandomVec(s.k, uint32_t(s.k));
      std::vector<float> want(s.n), got(s.n);
      ref->Matmul(x.data(), 1, w.view(), want.data());
      for (auto& cpu : cpus) {
        // Row-major, then (where the backend has one) the layout it repacks weights into at load.
        HostWeight packed = w;
        WeightView pv = packed.view();
        const bool repacked = cpu->PackMatmulWeight(&pv);
        for (int pass = 0; pass < (repacked ? 2 : 1); ++pass) {
          const WeightView v = pass == 0 ? w.view() : pv;
          std::fill(got.begin(), got.end(), NAN);
          cpu->Matmul(x.data(), 1, v, got.data());
          const bool rounds_x = dt == DType::kBF16 && cpu->name().find("bf16") != std::string::npos;
          const double sk = std::sqrt(double(s.k));
          ExpectNear(got, want, rounds_x ? 4e-3 * sk : 2e-5 * sk, rounds_x ? 1e-2 : 1e-5,
                     cpu->name() + " " + DTypeName(dt) + " " + std::to_string(s.n) + "x" + std::to_string(s.k) +
                         (pass == 0 ? "" : " repacked"));
        }
      }
    }
  }
}

// Row r's result must be bitwise identical alone, inside batches of 7 and 64, and with 1 or 2 threads.
// k = 1024 takes the AMX tiles where present (n = 301 leaves a 13-feature tail), k = 1029 the rest.
TEST_P(CpuOpsTest, MatmulIsBatchInvariant) {
  auto one_thread = CreateCpuBackend(CpuBackendOptions{1, GetParam()});
  ASSERT_TRUE(one_thread.ok());
  const int64_t n = 301, m = 64;
  for (const auto& [k, dt] : {std::pair{int64_t{1029}, DType::kF32}, std::pair{int64_t{1029}, DType::kBF16},
                              std::pair{int64_t{1029}, DType::kF16}, std::pair{int64_t{1024}, DType::kBF16}}) {
    for (bool pack : {false, true}) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " k=" + std::to_string(k) + (pack ? " repacked" : ""));
      HostWeight hw = MakeWeight(dt, n, k, 42);
      WeightView w = hw.view();
      // The layout the backend repacks weights into at load (where it has one) must be as batch-invariant.
      if (pack && !cpu_->PackMatmulWeight(&w)) continue;
      auto x = RandomVec(m * k, 43);
      std::vector<float> full(m * n), full1(m * n);
      cpu_->Matmul(x.data(), m, w, full.data());
      (*one_thread)->Matmul(x.data(), m, w, full1.data());
      ExpectBitwise(full.data(), full1.data(), full.size(), "64 rows, 2 threads vs 1 thread");
      for (int64_t r : {0, 5, 33, 63}) {
        std::vector<float> alone(n);
        cpu_->Matmul(x.data() + r * k, 1, w, alone.data());
        ExpectBitwise(alone.data(), full.data() + r * n, n, "row " + std::to_string(r) + " alone vs in 64");
        // Row r at position 4 of a batch of 7 other rows.
        std::vector<float> batch = RandomVec(7 * k, uint32_t(100 + r));
        std::memcpy(batch.data() + 4 * k, x.data() + r * k, k * sizeof(float));
        std::vector<float> y7(7 * n);
        (*one_thread)->Matmul(batch.data(), 7, w, y7.data());
        ExpectBitwise(y7.data() + 4 * n, full.data() + r * n, n, "row " + std::to_string(r) + " in batch of 7");
      }
    }
  }
}

TEST_P(CpuOpsTest, EmbeddingMatchesReference) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t d : {int64_t{5120}, int64_t{13}}) {
      HostWeight table = MakeWeight(dt, 50, d, 7);
      const std::vector<int32_t> ids = {100, 149, 99, 150, 120, 100, 0, 131, 140};  // shard = [100, 150)
      std::vector<float> got(ids.size() * d, NAN), want(ids.size() * d);
      cpu_->Embedding(ids.data(), ids.size(), table.view(), 100, got.data());
      ref_->Embedding(ids.data(), ids.size(), table.view(), 100, want.data());
      ExpectBitwise(got.data(), want.data(), got.size(), std::string("embedding ") + DTypeName(dt));
    }
  }
}

TEST_P(CpuOpsTest, RmsNormAndAddRmsNormMatchReference) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t d : {int64_t{5120}, int64_t{5125}, int64_t{13}}) {
      for (int64_t rows : {int64_t{1}, int64_t{3}, int64_t{17}}) {
        const std::string what = std::string(DTypeName(dt)) + " d=" + std::to_string(d) + " rows=" + std::to_string(rows);
        HostWeight w = MakeWeight(dt, 1, d, 9, 0.5f, 1.5f);
        auto x = RandomVec(rows * d, uint32_t(d + rows), -3.0f, 3.0f);
        std::vector<float> got(x.size()), want(x.size());
        cpu_->RmsNorm(x.data(), rows, w.view(), 1e-5f, got.data());
        ref_->RmsNorm(x.data(), rows, w.view(), 1e-5f, want.data());
        ExpectNear(got, want, 1e-6, 1e-5, "rmsnorm " + what);

        auto res_c = RandomVec(rows * d, 77), res_r = res_c;
        cpu_->AddRmsNorm(res_c.data(), x.data(), rows, w.view(), 1e-5f, got.data());
        ref_->AddRmsNorm(res_r.data(), x.data(), rows, w.view(), 1e-5f, want.data());
        ExpectBitwise(res_c.data(), res_r.data(), res_c.size(), "residual " + what);
        ExpectNear(got, want, 1e-6, 1e-5, "add_rmsnorm " + what);
      }
    }
  }
}

TEST_P(CpuOpsTest, SiluMulGatherMatchReference) {
  for (int64_t inter : {int64_t{13824}, int64_t{13}}) {
    for (int64_t rows : {int64_t{1}, int64_t{3}, int64_t{17}}) {
      auto gu = RandomVec(rows * 2 * inter, uint32_t(inter + rows), -8.0f, 8.0f);
      std::vector<float> got(rows * inter), want(rows * inter);
      cpu_->SiluMul(gu.data(), rows, inter, got.data());
      ref_->SiluMul(gu.data(), rows, inter, want.data());
      ExpectNear(got, want, 1e-6, 1e-5, "silu_mul inter=" + std::to_string(inter) + " rows=" + std::to_string(rows));
    }
  }
  const int64_t dim = 5125;
  auto x = RandomVec(10 * dim, 3);
  const std::vector<int32_t> rows = {9, 0, 4, 4};
  std::vector<float> got(rows.size() * dim), want(rows.size() * dim);
  cpu_->GatherRows(x.data(), rows.data(), rows.size(), dim, got.data());
  ref_->GatherRows(x.data(), rows.data(), rows.size(), dim, want.data());
  ExpectBitwise(got.data(), want.data(), got.size(), "gather_rows");
}

TEST_P(CpuOpsTest, RopeMatchesReference) {
  struct Case {
    int nq, nk, hd;
  };
  for (const Case& c : {Case{40, 40, 128}, Case{8, 4, 8}, Case{6, 2, 36}}) {
    const std::vector<int32_t> pos = {0, 1, 17, 511, 4095, 3, 3};
    const int64_t n = pos.size();
    auto q = RandomVec(n * c.nq * c.hd, 5), k = RandomVec(n * c.nk * c.hd, 6);
    auto q2 = q, k2 = k;
    cpu_->Rope(q.data(), k.data(), pos.data(), n, c.nq, c.nk, c.hd, 10000.0f);
    ref_->Rope(q2.data(), k2.data(), pos.data(), n, c.nq, c.nk, c.hd, 10000.0f);
    const std::string what = "rope hd=" + std::to_string(c.hd);
    ExpectNear(q, q2, 1e-6, 1e-6, what + " q");
    ExpectNear(k, k2, 1e-6, 1e-6, what + " k");
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuOpsTest,
                         ::testing::Values(CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAmx),
                         [](const ::testing::TestParamInfo<CpuIsa>& info) { return CpuIsaName(info.param); });

TEST(CpuBackend, RejectsBadOptions) {
  auto bad = CreateCpuBackend(CpuBackendOptions{-1, CpuIsa::kAuto});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto best = CreateCpuBackend(CpuBackendOptions{0, CpuIsa::kAuto});
  ASSERT_TRUE(best.ok()) << best.status();
  EXPECT_EQ((*best)->name().rfind("cpu-", 0), 0u) << (*best)->name();
  const CpuIsa detected = DetectCpuIsa();
  if (detected != CpuIsa::kAvx512 && detected != CpuIsa::kAmx) {
    auto unsupported = CreateCpuBackend(CpuBackendOptions{1, CpuIsa::kAvx512});
    EXPECT_EQ(unsupported.status().code(), absl::StatusCode::kInvalidArgument);
  }
  if (detected != CpuIsa::kAmx) {
    auto unsupported = CreateCpuBackend(CpuBackendOptions{1, CpuIsa::kAmx});
    EXPECT_EQ(unsupported.status().code(), absl::StatusCode::kInvalidArgument);
  }
  CpuIsa parsed;
  EXPECT_TRUE(ParseCpuIsa("amx", &parsed));
  EXPECT_EQ(parsed, CpuIsa::kAmx);
  EXPECT_FALSE(ParseCpuIsa("avx1024", &parsed));
}

}  // namespace
}  // namespace tpserve::kernels
