// The zip reader on archives written the way large torch.save files are: zip64 extra fields in the
// central directory and a zip64 end-of-central-directory record (hand-built here, independent of
// ZipWriter), plus broken zip64 records.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"
#include "tools/checkpoint/pickle_writer.h"
#include "tools/checkpoint/zip_writer.h"

namespace tpserve::checkpoint {
namespace {

void Le(std::string* s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

struct Member {
  std::string name;
  std::string data;
};

// Every size and offset in the central directory saturated to 0xffffffff and carried in zip64 extras.
std::string Zip64Archive(const std::vector<Member>& members, bool break_locator = false) {
  std::string z;
  std::vector<uint64_t> offsets;
  for (const Member& m : members) {
    offsets.push_back(z.size());
    Le(&z, 0x04034b50, 4);
    Le(&z, 45, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 4);  // time, date
    Le(&z, Crc32(0, m.data.data(), m.data.size()), 4);
    Le(&z, 0xffffffffu, 4);
    Le(&z, 0xffffffffu, 4);
    // Data 64-byte aligned, as torch.save writes it: a padding field after the zip64 one.
    const uint64_t pad = (64 - (z.size() + 4 + m.name.size() + 24) % 64) % 64;
    Le(&z, m.name.size(), 2);
    Le(&z, 24 + pad, 2);
    z += m.name;
    Le(&z, 0x0001, 2);
    Le(&z, 16, 2);
    Le(&z, m.data.size(), 8);
    Le(&z, m.data.size(), 8);
    Le(&z, 0x4246, 2);
    Le(&z, pad, 2);
    z.append(pad, '\0');
    z += m.data;
  }
  const uint64_t cd_offset = z.size();
  for (size_t i = 0; i < members.size(); ++i) {
    const Member& m = members[i];
    Le(&z, 0x02014b50, 4);
    Le(&z, 45, 2);
    Le(&z, 45, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 4);
    Le(&z, Crc32(0, m.data.data(), m.data.size()), 4);
    Le(&z, 0xffffffffu, 4);
    Le(&z, 0xffffffffu, 4);
    Le(&z, m.name.size(), 2);
    Le(&z, 28, 2);  // extra
    Le(&z, 0, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 2);
    Le(&z, 0, 4);
    Le(&z, 0xffffffffu, 4);
    z += m.name;
    Le(&z, 0x0001, 2);
    Le(&z, 24, 2);
    Le(&z, m.data.size(), 8);
    Le(&z, m.data.size(), 8);
    Le(&z, offsets[i], 8);
  }
  const uint64_t cd_size = z.size() - cd_offset;
  const uint64_t rec = z.size();
  Le(&z, 0x06064b50, 4);
  Le(&z, 44, 8);
  Le(&z, 45, 2);
  Le(&z, 45, 2);
  Le(&z, 0, 4);
  Le(&z, 0, 4);
  Le(&z, members.size(), 8);
  Le(&z, members.size(), 8);
  Le(&z, cd_size, 8);
  Le(&z, cd_offset, 8);
  Le(&z, 0x07064b50, 4);
  Le(&z, 0, 4);
  Le(&z, break_locator ? rec + (1ull << 40) : rec, 8);
  Le(&z, 1, 4);
  Le(&z, 0x06054b50, 4);
  Le(&z, 0, 4);
  Le(&z, 0xffff, 2);
  Le(&z, 0xffff, 2);
  Le(&z, 0xffffffffu, 4);
  Le(&z, 0xffffffffu, 4);
  Le(&z, 0, 2);
  return z;
}

class CheckpointZipTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("ckpt-zip"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& bytes) {
    std::ofstream f(dir_ + "/pytorch_model.bin", std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), bytes.size());
  }
  std::string dir_;
};

std::vector<Member> OneTensor() {
  std::vector<float> storage = {0.5f, -1.25f, 2.0f, 3.5f, -4.75f, 6.0f};
  std::string pkl = PickleStateDict({{"m", DType::kF32, "0", 6, 0, {2, 3}, {3, 1}}});
  return {{"weird-top-folder/data.pkl", pkl},
          {"weird-top-folder/data/0", std::string(reinterpret_cast<const char*>(storage.data()), 24)},
          {"weird-top-folder/version", "3\n"}};
}

TEST_F(CheckpointZipTest, Zip64RecordsAndExtraFields) {
  Write(Zip64Archive(OneTensor()));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  std::vector<float> col(2);
  ASSERT_TRUE((*ck)->ReadSlice("m", {2, 3}, 1, 1, 2, DType::kF32, col.data()).ok());
  EXPECT_EQ(col, (std::vector<float>{-1.25f, -4.75f}));
}

TEST_F(CheckpointZipTest, BrokenZip64LocatorRefused) {
  Write(Zip64Archive(OneTensor(), /*break_locator=*/true));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(ck.status().message(), "zip64")) << ck.status();
}

TEST_F(CheckpointZipTest, MissingDataPklRefused) {
  std::vector<Member> m = OneTensor();
  m.erase(m.begin());
  Write(Zip64Archive(m));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_TRUE(absl::StrContains(ck.status().message(), "data.pkl")) << ck.status();
}

// Crc32 against the standard check value and a zlib-computed one.
TEST(Crc32Test, KnownValues) {
  EXPECT_EQ(Crc32(0, "123456789", 9), 0xcbf43926u);
  std::string s = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(Crc32(0, s.data(), s.size()), 0x414fa339u);
  EXPECT_EQ(Crc32(Crc32(0, s.data(), 10), s.data() + 10, s.size() - 10), 0x414fa339u);
}

}  // namespace
}  // namespace tpserve::checkpoint
