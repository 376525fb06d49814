// A reader for the zip archives torch.save writes: stored (uncompressed) entries, zip64 when large.
// Entries are located through the central directory; data is never copied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/checkpoint/mapped_file.h"

namespace tpserve::checkpoint {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // into the file, past the local header
  uint64_t size = 0;
  uint32_t crc32 = 0;        // as recorded; not verified (that would touch every page at open)
};

// Parses FILE's central directory. Compressed or encrypted entries, truncation and offsets outside the
// file are INVALID_ARGUMENT naming the file (and entry).
absl::StatusOr<std::vector<ZipEntry>> ReadZipDirectory(const MappedFile& file);

}  // namespace tpserve::checkpoint
