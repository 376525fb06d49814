// Zip central-directory parsing (EOCD, zip64 locator/record, zip64 extra fields, local headers).
#include "worker/checkpoint/zip_reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tpserve::checkpoint {
namespace {

constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr size_t kEocdSize = 22;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;

uint64_t Le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

absl::Status Bad(const MappedFile& f, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("zip archive ", f.path(), ": ", what));
}

}  // namespace

absl::StatusOr<std::vector<ZipEntry>> ReadZipDirectory(const MappedFile& file) {
  const uint8_t* d = file.data();
  const uint64_t size = file.size();
  if (size < kEocdSize) return Bad(file, "truncated: too small to hold an end-of-central-directory record");
  // The EOCD sits at the end, followed by at most a 65535-byte comment.
  uint64_t eocd = UINT64_MAX;
  uint64_t lowest = size >= kEocdSize + 65535 ? size - kEocdSize - 65535 : 0;
  for (uint64_t pos = size - kEocdSize + 1; pos-- > lowest;) {
    if (Le(d + pos, 4) == kEocdSig && pos + kEocdSize + Le(d + pos + 20, 2) == size) {
      eocd = pos;
      break;
    }
  }
  if (eocd == UINT64_MAX) {
    return Bad(file, "no end-of-central-directory record (truncated, or not a PyTorch zip checkpoint)");
  }
  uint64_t num_entries = Le(d + eocd + 10, 2);
  uint64_t cd_size = Le(d + eocd + 12, 4);
  uint64_t cd_offset = Le(d + eocd + 16, 4);
  if (num_entries == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    if (eocd < 20 || Le(d + eocd - 20, 4) != kZip64LocatorSig) {
      return Bad(file, "zip64 sizes without a zip64 end-of-central-directory locator");
    }
    uint64_t rec = Le(d + eocd - 20 + 8, 8);
    if (rec > size || size - rec < 56 || Le(d + rec, 4) != kZip64EocdSig) {
      return Bad(file, "zip64 end-of-central-directory record is missing or outside the file");
    }
    num_entries = Le(d + rec + 32, 8);
    cd_size = Le(d + rec + 40, 8);
    cd_offset = Le(d + rec + 48, 8);
  }
  if (cd_offset > size || cd_size > size - cd_offset) {
    return Bad(file, absl::StrCat("central directory [", cd_offset, ", +", cd_size, ") lies outside the file of ",
                                  size, " bytes (truncated?)"));
  }
  if (num_entries > cd_size / kCentralSize) {
    return Bad(file, absl::StrCat("central directory claims ", num_entries, " entries in ", cd_size, " bytes"));
  }
  std::vector<ZipEntry> entries;
  entries.reserve(num_entries);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < num_entries; ++i) {
    if (cd_end - pos < kCentralSize || Le(d + pos, 4) != kCentralSig) {
      return Bad(file, absl::StrCat("central directory entry ", i, " is corrupt or truncated"));
    }
    const uint8_t* h = d + pos;
    uint64_t flags = Le(h + 8, 2), method = Le(h + 10, 2);
    uint64_t comp = Le(h + 20, 4), uncomp = Le(h + 24, 4);
    uint64_t name_len = Le(h + 28, 2), extra_len = Le(h + 30, 2), comment_len = Le(h + 32, 2);
    uint64_t local = Le(h + 42, 4);
    if (cd_end - pos - kCentralSize < name_len + extra_len + comment_len) {
      return Bad(file, absl::StrCat("central directory entry ", i, " is truncated"));
    }
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);
    e.crc32 = static_cast<uint32_t>(Le(h + 16, 4));
    // zip64 extra field: the 8-byte values appear only for the 32-bit fields that are saturated.
    const uint8_t* x = h + kCentralSize + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      uint64_t id = Le(x, 2), len = Le(x + 2, 2);
      if (static_cast<uint64_t>(x_end - x - 4) < len) {
        return Bad(file, absl::StrCat("entry '", e.name, "' has a truncated extra field"));
      }
      if (id == 0x0001) {
        const uint8_t* f = x + 4;
        const uint8_t* f_end = f + len;
        auto take = [&](uint64_t* v) -> bool {
          if (*v != 0xffffffffu) return true;
          if (f_end - f < 8) return false;
          *v = Le(f, 8);
          f += 8;
          return true;
        };
        if (!take(&uncomp) || !take(&comp) || !take(&local)) {
          return Bad(file, absl::StrCat("entry '", e.name, "' has a truncated zip64 extra field"));
        }
      }
      x += 4 + len;
    }
    if (flags & 1u) return Bad(file, absl::StrCat("entry '", e.name, "' is encrypted"));
    if (method != 0) {
      return Bad(file, absl::StrCat("entry '", e.name, "' is compressed (method ", method,
                                    "); only stored entries, as torch.save writes them, are supported"));
    }
    if (comp != uncomp) {
      return Bad(file, absl::StrCat("stored entry '", e.name, "' has compressed size ", comp,
                                    " != uncompressed size ", uncomp));
    }
    if (local > size || size - local < kLocalSize || Le(d + local, 4) != kLocalSig) {
      return Bad(file, absl::StrCat("entry '", e.name, "' has no local header at offset ", local, " (truncated?)"));
    }
    uint64_t data = local + kLocalSize + Le(d + local + 26, 2) + Le(d + local + 28, 2);
    if (data > size || uncomp > size - data) {
      return Bad(file, absl::StrCat("entry '", e.name, "' data [", data, ", +", uncomp,
                                    ") lies outside the file of ", size, " bytes (truncated?)"));
    }
    e.data_offset = data;
    e.size = uncomp;
    entries.push_back(std::move(e));
    pos += kCentralSize + name_len + extra_len + comment_len;
  }
  return entries;
}

}  // namespace tpserve::checkpoint
