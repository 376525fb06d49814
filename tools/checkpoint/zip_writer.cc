// Stored-zip writing: local headers patched after the data (no data descriptors), zip64 on demand.
#include "tools/checkpoint/zip_writer.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tpserve::checkpoint {
namespace {

// Slice-by-8 tables, built once.
struct Crc32Tables {
  uint32_t t[8][256];
  Crc32Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};

const Crc32Tables& Tables() {
  static const Crc32Tables* tables = new Crc32Tables();
  return *tables;
}

void PutLe(std::string* s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

constexpr uint64_t k32Max = 0xffffffffu;
constexpr uint64_t kAlign = 64;

}  // namespace

uint32_t Crc32(uint32_t crc, const void* data, size_t n) {
  const auto& t = Tables().t;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

absl::StatusOr<std::unique_ptr<ZipWriter>> ZipWriter::Create(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<ZipWriter>(new ZipWriter(path, f));
}

ZipWriter::~ZipWriter() {
  if (f_ != nullptr) std::fclose(f_);
}

absl::Status ZipWriter::IoError(const char* what) const {
  return absl::InternalError(absl::StrCat("writing ", path_, ": ", what, ": ", std::strerror(errno)));
}

absl::Status ZipWriter::Put(const void* data, size_t n) {
  if (n > 0 && std::fwrite(data, 1, n, f_) != n) return IoError("write failed");
  pos_ += n;
  return absl::OkStatus();
}

absl::Status ZipWriter::BeginEntry(const std::string& name) {
  if (f_ == nullptr || in_entry_) return absl::FailedPreconditionError("ZipWriter: BeginEntry out of order");
  if (name.size() > 0xffff) return absl::InvalidArgumentError("zip entry name too long");
  current_ = Entry{name, pos_, 0, 0};
  uint64_t unpadded = pos_ + 30 + name.size() + 4;
  uint64_t pad = (kAlign - unpadded % kAlign) % kAlign;
  std::string h;
  PutLe(&h, 0x04034b50, 4);
  PutLe(&h, 20, 2);  // version needed
  PutLe(&h, 0, 2);   // flags
  PutLe(&h, 0, 2);   // stored
  PutLe(&h, 0, 2);   // time
  PutLe(&h, 0x21, 2);  // date 1980-01-01
  PutLe(&h, 0, 4);   // crc, patched in EndEntry
  PutLe(&h, 0, 4);   // compressed size, patched
  PutLe(&h, 0, 4);   // uncompressed size, patched
  PutLe(&h, name.size(), 2);
  PutLe(&h, 4 + pad, 2);
  h += name;
  PutLe(&h, 0x4246, 2);  // "FB": the padding field torch uses
  PutLe(&h, pad, 2);
  h.append(pad, 'Z');
  TP_RETURN_IF_ERROR(Put(h.data(), h.size()));
  in_entry_ = true;
  return absl::OkStatus();
}

absl::Status ZipWriter::Write(const void* data, size_t n) {
  if (!in_entry_) return absl::FailedPreconditionError("ZipWriter: Write outside an entry");
  current_.crc = Crc32(current_.crc, data, n);
  current_.size += n;
  if (current_.size >= k32Max) {
    return absl::InvalidArgumentError(absl::StrCat("zip entry ", current_.name, " exceeds 4 GiB"));
  }
  return Put(data, n);
}

absl::Status ZipWriter::EndEntry() {
  if (!in_entry_) return absl::FailedPreconditionError("ZipWriter: EndEntry without BeginEntry");
  std::string patch;
  PutLe(&patch, current_.crc, 4);
  PutLe(&patch, current_.size, 4);
  PutLe(&patch, current_.size, 4);
  if (std::fflush(f_) != 0) return IoError("flush failed");
  if (std::fseek(f_, static_cast<long>(current_.header_offset + 14), SEEK_SET) != 0 ||
      std::fwrite(patch.data(), 1, patch.size(), f_) != patch.size() ||
      std::fseek(f_, static_cast<long>(pos_), SEEK_SET) != 0) {
    return IoError("patching the local header failed");
  }
  entries_.push_back(current_);
  in_entry_ = false;
  return absl::OkStatus();
}

absl::Status ZipWriter::AddEntry(const std::string& name, const void* data, size_t n) {
  TP_RETURN_IF_ERROR(BeginEntry(name));
  TP_RETURN_IF_ERROR(Write(data, n));
  return EndEntry();
}

absl::Status ZipWriter::Finish() {
  if (f_ == nullptr || in_entry_) return absl::FailedPreconditionError("ZipWriter: Finish out of order");
  const uint64_t cd_offset = pos_;
  std::string cd;
  for (const Entry& e : entries_) {
    bool z64 = e.header_offset >= k32Max;
    PutLe(&cd, 0x02014b50, 4);
    PutLe(&cd, z64 ? 45 : 20, 2);  // made by
    PutLe(&cd, z64 ? 45 : 20, 2);  // needed
    PutLe(&cd, 0, 2);
    PutLe(&cd, 0, 2);
    PutLe(&cd, 0, 2);
    PutLe(&cd, 0x21, 2);
    PutLe(&cd, e.crc, 4);
    PutLe(&cd, e.size, 4);
    PutLe(&cd, e.size, 4);
    PutLe(&cd, e.name.size(), 2);
    PutLe(&cd, z64 ? 12 : 0, 2);  // extra
    PutLe(&cd, 0, 2);             // comment
    PutLe(&cd, 0, 2);             // disk
    PutLe(&cd, 0, 2);             // internal attributes
    PutLe(&cd, 0, 4);             // external attributes
    PutLe(&cd, z64 ? k32Max : e.header_offset, 4);
    cd += e.name;
    if (z64) {
      PutLe(&cd, 0x0001, 2);
      PutLe(&cd, 8, 2);
      PutLe(&cd, e.header_offset, 8);
    }
  }
  const uint64_t cd_size = cd.size();
  const uint64_t n = entries_.size();
  if (n >= 0xffff || cd_offset >= k32Max || cd_size >= k32Max) {
    uint64_t rec = cd_offset + cd_size;
    PutLe(&cd, 0x06064b50, 4);
    PutLe(&cd, 44, 8);  // size of the rest of the record
    PutLe(&cd, 45, 2);
    PutLe(&cd, 45, 2);
    PutLe(&cd, 0, 4);
    PutLe(&cd, 0, 4);
    PutLe(&cd, n, 8);
    PutLe(&cd, n, 8);
    PutLe(&cd, cd_size, 8);
    PutLe(&cd, cd_offset, 8);
    PutLe(&cd, 0x07064b50, 4);  // locator
    PutLe(&cd, 0, 4);
    PutLe(&cd, rec, 8);
    PutLe(&cd, 1, 4);
  }
  PutLe(&cd, 0x06054b50, 4);
  PutLe(&cd, 0, 2);
  PutLe(&cd, 0, 2);
  PutLe(&cd, n >= 0xffff ? 0xffff : n, 2);
  PutLe(&cd, n >= 0xffff ? 0xffff : n, 2);
  PutLe(&cd, cd_size >= k32Max ? k32Max : cd_size, 4);
  PutLe(&cd, cd_offset >= k32Max ? k32Max : cd_offset, 4);
  PutLe(&cd, 0, 2);
  TP_RETURN_IF_ERROR(Put(cd.data(), cd.size()));
  int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) return IoError("close failed");
  return absl::OkStatus();
}

}  // namespace tpserve::checkpoint
