// Debug dumps of named activations as NumPy .npy files (float32, C order), one file per activation,
// per layer, per step: DIR/step000012/layer03.q.npy. Load them with numpy.load and compare layer by layer
// with a reference forward. Thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace tpserve::model {

// Writes `shape` float32 host data as .npy (format 1.0).
absl::Status WriteNpy(const std::string& path, const float* data, const std::vector<int64_t>& shape);

class ActivationDumper {
 public:
  // `dir` empty => disabled (every call is a no-op).
  ActivationDumper(std::string dir, int rank) : dir_(std::move(dir)), rank_(rank) {}
  bool enabled() const { return !dir_.empty(); }

  // Starts step `step`: creates DIR/stepNNNNNN (DIR/rankR/stepNNNNNN when rank > 0).
  absl::Status BeginStep(int64_t step);
  // Downloads [rows, cols] floats from backend memory and writes "<layer>.<name>.npy"
  // (layer -1 => no layer prefix). Synchronizes the backend.
  absl::Status Dump(kernels::Backend& backend, int layer, const std::string& name, const float* data,
                    int64_t rows, int64_t cols);
  // The same for data already on the host.
  absl::Status DumpHost(int layer, const std::string& name, const float* host, int64_t rows, int64_t cols);

 private:
  std::string dir_;
  int rank_;
  std::string step_dir_;
  std::vector<float> host_;
};

}  // namespace tpserve::model
