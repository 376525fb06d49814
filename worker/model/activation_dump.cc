// .npy writer and the per-step activation dumper (see activation_dump.h).
#include "worker/model/activation_dump.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tpserve::model {

absl::Status WriteNpy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, ending in '\n'.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) return absl::InvalidArgumentError(absl::StrCat("cannot create dump file ", path));
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  f.write(len_le, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  if (!f) return absl::InternalError(absl::StrCat("short write to dump file ", path));
  return absl::OkStatus();
}

absl::Status ActivationDumper::BeginStep(int64_t step) {
  if (!enabled()) return absl::OkStatus();
  std::filesystem::path p(dir_);
  if (rank_ > 0) p /= absl::StrCat("rank", rank_);
  p /= absl::StrFormat("step%06d", step);
  std::error_code ec;
  std::filesystem::create_directories(p, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create activation dump directory ", p.string(), ": ", ec.message()));
  }
  step_dir_ = p.string();
  return absl::OkStatus();
}

absl::Status ActivationDumper::Dump(kernels::Backend& backend, int layer, const std::string& name,
                                    const float* data, int64_t rows, int64_t cols) {
  if (!enabled() || step_dir_.empty()) return absl::OkStatus();
  host_.resize(static_cast<size_t>(rows * cols));
  backend.Download(host_.data(), data, host_.size() * sizeof(float));
  return DumpHost(layer, name, host_.data(), rows, cols);
}

absl::Status ActivationDumper::DumpHost(int layer, const std::string& name, const float* host, int64_t rows,
                                        int64_t cols) {
  if (!enabled() || step_dir_.empty()) return absl::OkStatus();
  const std::string file =
      layer < 0 ? absl::StrCat(name, ".npy") : absl::StrFormat("layer%02d.%s.npy", layer, name);
  return WriteNpy(step_dir_ + "/" + file, host, {rows, cols});
}

}  // namespace tpserve::model
