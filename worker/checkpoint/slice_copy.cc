// Strided copy + dtype conversion, dispatched once per call (never per element), threaded for big slices.
#include "worker/checkpoint/slice_copy.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "common/log.h"

namespace tpserve::checkpoint {
namespace {

// Copies below this size stay on the calling thread: thread start-up would dominate.
constexpr int64_t kParallelBytes = 32ll << 20;
constexpr int kMaxThreads = 8;

// Unaligned-safe loads/stores through memcpy (compiles to plain moves).
template <DType T>
struct Elem;
template <>
struct Elem<DType::kF32> {
  static float Load(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static void Store(float v, uint8_t* p) { std::memcpy(p, &v, 4); }
};
template <>
struct Elem<DType::kBF16> {
  static float Load(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return BF16ToF32(h);
  }
  static void Store(float v, uint8_t* p) {
    uint16_t h = F32ToBF16(v);
    std::memcpy(p, &h, 2);
  }
};
template <>
struct Elem<DType::kF16> {
  static float Load(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return F16ToF32(h);
  }
  static void Store(float v, uint8_t* p) {
    uint16_t h = F32ToF16(v);
    std::memcpy(p, &h, 2);
  }
};

template <DType S, DType D>
void ConvertRows(const StridedView& v, int64_t row_begin, int64_t row_end, uint8_t* dst) {
  const size_t ss = DTypeSize(S), ds = DTypeSize(D);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* s = v.src + static_cast<size_t>(r * v.row_stride) * ss;
    uint8_t* d = dst + static_cast<size_t>(r * v.cols) * ds;
    if (S == D && v.col_stride == 1) {
      std::memcpy(d, s, static_cast<size_t>(v.cols) * ss);
      continue;
    }
    const size_t step = static_cast<size_t>(v.col_stride) * ss;
    for (int64_t c = 0; c < v.cols; ++c) {
      if constexpr (S == D) {
        std::memcpy(d, s, ss);  // strided same-dtype copy: bits preserved exactly (NaN payloads too)
      } else {
        Elem<D>::Store(Elem<S>::Load(s), d);
      }
      s += step;
      d += ds;
    }
  }
}

using RowFn = void (*)(const StridedView&, int64_t, int64_t, uint8_t*);

template <DType S>
RowFn PickDst(DType d) {
  switch (d) {
    case DType::kF32: return &ConvertRows<S, DType::kF32>;
    case DType::kBF16: return &ConvertRows<S, DType::kBF16>;
    case DType::kF16: return &ConvertRows<S, DType::kF16>;
    case DType::kI8: break;  // quantizing is the loader's (worker/model/quantization.h), never a conversion
  }
  return nullptr;
}

RowFn Pick(DType s, DType d) {
  switch (s) {
    case DType::kF32: return PickDst<DType::kF32>(d);
    case DType::kBF16: return PickDst<DType::kBF16>(d);
    case DType::kF16: return PickDst<DType::kF16>(d);
    case DType::kI8: break;  // no checkpoint stores int8
  }
  return nullptr;
}

}  // namespace

void CopyStridedView(const StridedView& view, DType dst_dtype, void* dst) {
  if (view.rows <= 0 || view.cols <= 0) return;
  RowFn fn = Pick(view.src_dtype, dst_dtype);
  TP_CHECK(fn != nullptr) << "no conversion from " << DTypeName(view.src_dtype) << " to " << DTypeName(dst_dtype);
  uint8_t* out = static_cast<uint8_t*>(dst);
  int64_t bytes = view.rows * view.cols * static_cast<int64_t>(DTypeSize(view.src_dtype));
  int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = static_cast<int>(std::min<int64_t>({kMaxThreads, hw, view.rows, bytes / kParallelBytes + 1}));
  if (threads <= 1) {
    fn(view, 0, view.rows, out);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    int64_t b = view.rows * t / threads, e = view.rows * (t + 1) / threads;
    pool.emplace_back([=, &view] { fn(view, b, e, out); });
  }
  for (auto& th : pool) th.join();
}

}  // namespace tpserve::checkpoint
