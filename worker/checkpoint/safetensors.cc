// Safetensors header validation; nothing is copied, TensorInfo::data points into the mapping.
#include "worker/checkpoint/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/tensor_layout.h"

namespace tpserve::checkpoint {
namespace {

using json = nlohmann::json;

// The reference implementation refuses headers over 100 MB; a 13B header is ~40 KB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

bool JsonToU64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

absl::Status Bad(const MappedFile& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", file.path(), ": ", what));
}

}  // namespace

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(const MappedFile& file) {
  if (file.size() < 8) {
    return Bad(file, absl::StrCat("truncated: ", file.size(), " bytes, need at least the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file.data()[i];
  if (header_len > file.size() - 8) {
    return Bad(file, absl::StrCat("header length ", header_len, " exceeds the file size ", file.size(),
                                  " (truncated or not a safetensors file)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return Bad(file, absl::StrCat("header length ", header_len, " exceeds the 100 MB limit"));
  }
  const char* hbegin = reinterpret_cast<const char*>(file.data() + 8);
  json header = json::parse(hbegin, hbegin + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Bad(file, "header is not a valid JSON object");
  }
  const uint8_t* data_section = file.data() + 8 + header_len;
  const uint64_t data_size = file.size() - 8 - header_len;

  std::vector<TensorInfo> tensors;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per tensor, for the overlap check
  std::vector<size_t> range_owner;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const json& e = it.value();
    auto where = [&](absl::string_view what) { return Bad(file, absl::StrCat("tensor '", name, "': ", what)); };
    if (!e.is_object()) return where("entry is not a JSON object");
    auto dt = e.find("dtype");
    auto sh = e.find("shape");
    auto off = e.find("data_offsets");
    if (dt == e.end() || !dt->is_string()) return where("missing string field 'dtype'");
    if (sh == e.end() || !sh->is_array()) return where("missing array field 'shape'");
    if (off == e.end() || !off->is_array() || off->size() != 2) {
      return where("missing field 'data_offsets' ([begin, end])");
    }
    std::string dtype_name = dt->get<std::string>();
    TensorInfo t;
    t.name = name;
    t.file = file.path();
    if (dtype_name == "F32") {
      t.dtype = DType::kF32;
    } else if (dtype_name == "BF16") {
      t.dtype = DType::kBF16;
    } else if (dtype_name == "F16") {
      t.dtype = DType::kF16;
    } else {
      return where(absl::StrCat("unsupported dtype '", dtype_name, "' (tpserve reads F32, BF16 and F16)"));
    }
    for (const json& d : *sh) {
      uint64_t v;
      if (!JsonToU64(d, &v) || v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return where(absl::StrCat("shape entry ", d.dump(), " is not a non-negative integer"));
      }
      t.shape.push_back(static_cast<int64_t>(v));
    }
    int64_t numel = 0;
    if (!CheckedNumel(t.shape, DTypeSize(t.dtype), &numel)) {
      return where(absl::StrCat("shape [", absl::StrJoin(t.shape, ", "), "] overflows"));
    }
    uint64_t begin, end;
    if (!JsonToU64((*off)[0], &begin) || !JsonToU64((*off)[1], &end)) {
      return where("data_offsets must be non-negative integers");
    }
    if (begin > end || end > data_size) {
      return where(absl::StrCat("data_offsets [", begin, ", ", end, "] lie outside the data section of ",
                                data_size, " bytes (truncated file?)"));
    }
    uint64_t want = static_cast<uint64_t>(numel) * DTypeSize(t.dtype);
    if (end - begin != want) {
      return where(absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
                                dtype_name, " shape [", absl::StrJoin(t.shape, ", "), "] needs ", want));
    }
    if (begin % DTypeSize(t.dtype) != 0) {
      return where(absl::StrCat("data offset ", begin, " is misaligned for ", dtype_name));
    }
    t.strides = ContiguousStrides(t.shape);
    t.data = data_section + begin;
    if (end > begin) {
      ranges.emplace_back(begin, end);
      range_owner.push_back(tensors.size());
    }
    tensors.push_back(std::move(t));
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (ranges[order[i]].first < ranges[order[i - 1]].second) {
      return Bad(file, absl::StrCat("tensors '", tensors[range_owner[order[i - 1]]].name, "' and '",
                                    tensors[range_owner[order[i]]].name, "' overlap in the data section"));
    }
  }
  return tensors;
}

}  // namespace tpserve::checkpoint
