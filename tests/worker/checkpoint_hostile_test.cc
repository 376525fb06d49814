// Hostile and broken checkpoints: each must be refused at Open with a clear INVALID_ARGUMENT (or
// NOT_FOUND) naming what is wrong, never crash, never execute anything.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"
#include "tools/checkpoint/pickle_writer.h"
#include "tools/checkpoint/safetensors_writer.h"
#include "tools/checkpoint/zip_writer.h"

namespace tpserve::checkpoint {
namespace {

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), bytes.size());
}

std::string ReadFile(const std::string& path) { return testing::ReadFileOrDie(path); }

std::string Le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

// A safetensors file from a raw JSON header and a data section of DATA_BYTES non-zero bytes.
std::string Safetensors(const std::string& json, size_t data_bytes) {
  return Le64(json.size()) + json + std::string(data_bytes, '\x3f');
}

// Opens DIR and expects CODE with every one of NEEDLES in the message.
void ExpectRefused(const std::string& dir, absl::StatusCode code, std::vector<std::string> needles) {
  auto ck = Checkpoint::Open(dir);
  ASSERT_FALSE(ck.ok()) << "opened a broken checkpoint in " << dir;
  EXPECT_EQ(ck.status().code(), code) << ck.status();
  for (const auto& n : needles) EXPECT_TRUE(absl::StrContains(ck.status().message(), n)) << ck.status() << "\nmissing: " << n;
}

class CheckpointHostileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("ckpt-hostile"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string st() const { return dir_ + "/model.safetensors"; }
  std::string bin() const { return dir_ + "/pytorch_model.bin"; }

  // A valid one-tensor zip checkpoint with PKL as its data.pkl.
  void WriteZip(const std::string& pkl, const std::vector<float>& storage = {1.5f, -2.0f, 3.25f, 4.0f}) {
    auto zip = ZipWriter::Create(bin());
    ASSERT_TRUE(zip.ok());
    ASSERT_TRUE((*zip)->AddEntry("pytorch_model/data.pkl", pkl.data(), pkl.size()).ok());
    ASSERT_TRUE((*zip)->AddEntry("pytorch_model/data/0", storage.data(), storage.size() * 4).ok());
    ASSERT_TRUE((*zip)->AddEntry("pytorch_model/version", "3\n", 2).ok());
    ASSERT_TRUE((*zip)->Finish().ok());
  }

  std::string dir_;
};

const char kGoodHeader[] = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

TEST_F(CheckpointHostileTest, ValidSafetensorsBaselineOpens) {
  WriteFile(st(), Safetensors(kGoodHeader, 16));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->TensorNames(), std::vector<std::string>{"w"});
}

TEST_F(CheckpointHostileTest, TruncatedSafetensors) {
  WriteFile(st(), std::string("\x10\x00\x00", 3));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"model.safetensors", "truncated"});
  // Valid header, data section cut short: the tensor's offsets now run past the end.
  WriteFile(st(), Safetensors(kGoodHeader, 10));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "outside the data section"});
}

TEST_F(CheckpointHostileTest, HeaderLengthBeyondFile) {
  WriteFile(st(), Le64(1ull << 40) + "{}");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"header length", "exceeds the file size"});
  WriteFile(st(), Le64(~0ull) + "{}");  // would overflow 8 + len
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"header length"});
}

TEST_F(CheckpointHostileTest, HeaderOffsetsPastEnd) {
  WriteFile(st(), Safetensors(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[1000,1016]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "[1000, 1016]"});
  WriteFile(st(), Safetensors(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'"});
}

TEST_F(CheckpointHostileTest, BadJson) {
  WriteFile(st(), Safetensors(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"not a valid JSON object"});
  WriteFile(st(), Safetensors(R"([1, 2, 3])", 0));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"not a valid JSON object"});
  WriteFile(st(), Safetensors(R"({"w":{"dtype":"F32","shape":"2x2","data_offsets":[0,16]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
}

TEST_F(CheckpointHostileTest, SizeMismatchOverflowOverlapAndDtype) {
  WriteFile(st(), Safetensors(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "needs 24"});
  WriteFile(st(), Safetensors(
      R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,16]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "overflows"});
  WriteFile(st(), Safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"overlap"});
  WriteFile(st(), Safetensors(R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'ids'", "I64"});
  WriteFile(st(), Safetensors(R"({"h":{"dtype":"BF16","shape":[2],"data_offsets":[1,5]}})", 16));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'h'", "misaligned"});
}

TEST_F(CheckpointHostileTest, MissingTensorIsNotFound) {
  WriteFile(st(), Safetensors(kGoodHeader, 16));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto t = (*ck)->Get("model.layers.0.mlp.up_proj.weight");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "model.layers.0.mlp.up_proj.weight")) << t.status();
  EXPECT_TRUE(absl::StrContains(t.status().message(), dir_)) << t.status();
}

TEST_F(CheckpointHostileTest, EmptyOrMissingDirectory) {
  ExpectRefused(dir_, absl::StatusCode::kNotFound, {"model.safetensors", "pytorch_model.bin"});
  ExpectRefused(dir_ + "/nope", absl::StatusCode::kNotFound, {"nope"});
}

TEST_F(CheckpointHostileTest, ValidZipBaselineOpens) {
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 4, 0, {2, 2}, {2, 1}}}));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  std::vector<float> out(4);
  ASSERT_TRUE((*ck)->ReadSlice("w", {2, 2}, 0, 0, 2, DType::kF32, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{1.5f, -2.0f, 3.25f, 4.0f}));
}

// The classic pickle exploit: GLOBAL os.system, then REDUCE with a command.
TEST_F(CheckpointHostileTest, PickleReferencingOsSystem) {
  static const char kPickle[] = "\x80\x02" "cos\nsystem\nq\x00X\x06\x00\x00\x00" "touch " "q\x01\x85q\x02Rq\x03.";
  WriteZip(std::string(kPickle, sizeof(kPickle) - 1));
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"pytorch_model.bin", "forbidden global 'os system'"});
}

TEST_F(CheckpointHostileTest, PickleReferencingBuiltinsEval) {
  std::string code = "print(1)";
  std::string pkl = std::string("\x80\x02") + "cbuiltins\neval\n" + "X" + std::string("\x08\x00\x00\x00", 4) + code +
                    "\x85R.";
  WriteZip(pkl);
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"forbidden global 'builtins eval'"});
  // The protocol-4 spelling (STACK_GLOBAL) is refused the same way.
  pkl = std::string("\x80\x04") + "\x8c\x08" + "builtins" + "\x8c\x04" + "exec" + "\x93" + "N\x85R.";
  WriteZip(pkl);
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"forbidden global 'builtins exec'"});
  // A torch global outside the allow-list.
  WriteZip(std::string("\x80\x02") + "ctorch._utils\n_rebuild_parameter\n.");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"forbidden global 'torch._utils _rebuild_parameter'"});
}

TEST_F(CheckpointHostileTest, MalformedPickles) {
  WriteZip(std::string("\x80\x02}(X\x01\x00\x00\x00", 10));  // truncated
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"pickle in", "truncated"});
  WriteZip(std::string("\x80\x02}\x64.", 5));  // unknown opcode 'd' (DICT, protocol 0)
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"unsupported opcode 0x64"});
  WriteZip(std::string("\x80\x02h\x07.", 5));  // BINGET of a never-stored memo key
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"memo key 7"});
  WriteZip(std::string("\x80\x02" "0.", 4));  // POP on an empty stack
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"stack underflow"});
  WriteZip(std::string("\x80\x02") + std::string(2'000'000, '(') + ".");  // bounded mark stack
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"too many marks"});
  WriteZip(std::string("\x80\x02") + std::string(2'000'000, 'N') + ".");  // bounded value stack
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"stack too deep"});
  WriteZip(std::string("\x80\x02K\x05.", 5));  // not a dict
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"state dict"});
}

TEST_F(CheckpointHostileTest, TensorViewsOutsideTheirStorage) {
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 4, 1, {2, 2}, {2, 1}}}));  // offset 1 + extent 4 > 4
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "past the end of storage"});
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 400, 0, {2, 2}, {2, 1}}}));  // storage claims more than the entry
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "entry holds 16 bytes"});
  WriteZip(PickleStateDict({{"w", DType::kF32, "7", 4, 0, {2, 2}, {2, 1}}}));  // no such storage entry
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "pytorch_model/data/7"});
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 4, 0, {2, 2}, {-1, 1}}}));  // negative stride
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'"});
}

TEST_F(CheckpointHostileTest, TruncatedZip) {
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 4, 0, {2, 2}, {2, 1}}}));
  std::string full = ReadFile(bin());
  for (size_t keep : {size_t{0}, size_t{10}, full.size() / 2, full.size() - 30, full.size() - 1}) {
    WriteFile(bin(), full.substr(0, keep));
    ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"pytorch_model.bin"});
  }
}

TEST_F(CheckpointHostileTest, CompressedEntryRefused) {
  WriteZip(PickleStateDict({{"w", DType::kF32, "0", 4, 0, {2, 2}, {2, 1}}}));
  std::string z = ReadFile(bin());
  // Mark the storage entry as deflated (method 8) in the central directory.
  const std::string sig("PK\x01\x02", 4);
  size_t pos = z.find(sig);
  while (pos != std::string::npos && z.compare(pos + 46, 20, "pytorch_model/data/0") != 0) pos = z.find(sig, pos + 1);
  ASSERT_NE(pos, std::string::npos);
  z[pos + 10] = 8;
  WriteFile(bin(), z);
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"pytorch_model/data/0", "compressed"});
}

TEST_F(CheckpointHostileTest, IndexNamingMissingShard) {
  WriteFile(dir_ + "/model-00001-of-00002.safetensors", Safetensors(kGoodHeader, 16));
  WriteFile(dir_ + "/model.safetensors.index.json",
            R"({"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors",)"
            R"("lm_head.weight":"model-00002-of-00002.safetensors"}})");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument,
                {"model-00002-of-00002.safetensors", "lm_head.weight", "missing"});
}

TEST_F(CheckpointHostileTest, IndexPlacingTensorInWrongShard) {
  WriteFile(dir_ + "/model-00001-of-00001.safetensors", Safetensors(kGoodHeader, 16));
  WriteFile(dir_ + "/model.safetensors.index.json",
            R"({"weight_map":{"w":"model-00001-of-00001.safetensors","x":"model-00001-of-00001.safetensors"}})");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'x'", "does not hold it"});
  WriteFile(dir_ + "/model.safetensors.index.json", R"({"weight_map":{"w":"../../etc/passwd"}})");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"not a plain file name"});
  WriteFile(dir_ + "/model.safetensors.index.json", R"({"weight_map":)");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"not a valid JSON object"});
}

TEST_F(CheckpointHostileTest, DuplicateTensorAcrossShards) {
  WriteFile(dir_ + "/a.safetensors", Safetensors(kGoodHeader, 16));
  WriteFile(dir_ + "/b.safetensors", Safetensors(kGoodHeader, 16));
  WriteFile(dir_ + "/model.safetensors.index.json", R"({"weight_map":{"w":"a.safetensors","v":"b.safetensors"}})");
  ExpectRefused(dir_, absl::StatusCode::kInvalidArgument, {"'w'", "appears in both"});
}

}  // namespace
}  // namespace tpserve::checkpoint
