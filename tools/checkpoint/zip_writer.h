// A streaming writer for stored (uncompressed) zip archives in the layout torch.save produces:
// entry data 64-byte aligned (padding in an extra field), CRC-32 patched in after each entry,
// zip64 records when offsets pass 4 GiB. Used by make-model and by tests that build hostile files.
// Thread-compatible: one writer per thread.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tpserve::checkpoint {

// CRC-32 (zip / IEEE 802.3), continuing from CRC (0 to start).
uint32_t Crc32(uint32_t crc, const void* data, size_t n);

class ZipWriter {
 public:
  static absl::StatusOr<std::unique_ptr<ZipWriter>> Create(const std::string& path);
  ~ZipWriter();

  // Starts a stored entry whose data begins on a 64-byte boundary. Entries must be < 4 GiB each.
  absl::Status BeginEntry(const std::string& name);
  absl::Status Write(const void* data, size_t n);
  absl::Status EndEntry();
  // Convenience: Begin + Write + End.
  absl::Status AddEntry(const std::string& name, const void* data, size_t n);
  // Writes the central directory and closes the file. Required; the destructor only closes.
  absl::Status Finish();

 private:
  struct Entry {
    std::string name;
    uint64_t header_offset = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
  };
  ZipWriter(std::string path, std::FILE* f) : path_(std::move(path)), f_(f) {}
  absl::Status Put(const void* data, size_t n);
  absl::Status IoError(const char* what) const;

  std::string path_;
  std::FILE* f_;
  uint64_t pos_ = 0;
  bool in_entry_ = false;
  Entry current_;
  std::vector<Entry> entries_;
};

}  // namespace tpserve::checkpoint
