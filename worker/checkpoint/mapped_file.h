// A read-only, private memory mapping of one whole file, alive as long as the object.
// Thread-safety: immutable after Open; safe to read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tpserve::checkpoint {

class MappedFile {
 public:
  // NOT_FOUND when PATH is absent, INVALID_ARGUMENT when it is not a regular file. An empty file maps
  // to data() == nullptr, size() == 0.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  // Wraps SIZE bytes at DATA (borrowed, not copied: they must outlive the object) under the name PATH, so
  // the parsers can run on an in-memory image (fuzz/): reads past the end then hit ASan, not a mapped page.
  static std::unique_ptr<MappedFile> FromMemory(std::string path, const uint8_t* data, size_t size);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size, bool owns_mapping = true)
      : path_(std::move(path)), data_(data), size_(size), owns_mapping_(owns_mapping) {}

  std::string path_;
  const uint8_t* data_;
  size_t size_;
  bool owns_mapping_;  // false for FromMemory: nothing to munmap
};

}  // namespace tpserve::checkpoint
