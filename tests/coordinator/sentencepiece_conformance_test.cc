// tpserve's own SentencePiece BPE encoder/decoder against the real SentencePiece (Debian's spm_encode /
// spm_decode programs, run as subprocesses): same ids and same text on many strings, for the Llama 2
// tokenizer and stories260K's. Skips when the programs or ../shared are absent.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "coordinator/tokenizer/sentencepiece_bridge.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

using coordinator::sp_bridge::Processor;

bool HaveSpm() { return std::system("command -v spm_encode >/dev/null 2>&1 && command -v spm_decode >/dev/null 2>&1") == 0; }

std::string Run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

std::vector<std::string> Lines() {
  std::vector<std::string> lines = {
      "Hello, world!",
      " leading space",
      "two  spaces   and\ttabs",
      "<|user|>\nWrite a haiku about GPUs.\n<|assistant|>\n",
      "Prices: 12,345.67 € or ¥9800; 3.14159 2026-11-27",
      "日本語のテキスト と 中文 和 한국어",
      "emoji 🙂🚀 and combining e\xCC\x81",
      "Once upon a time, there was a little girl named Lily.",
      "trailing space ",
      "UPPER lower MiXeD cAsE",
      "code: for (int i = 0; i < n; ++i) { x[i] = y[i] * 2; }",
      "\xF0\x9F\x98\x80\xF0\x9F\x98\x81 grinning faces",
      "a",
      "the the the the the the",
      "ünïcödé ñ ç ß ø å",
  };
  // Plus lines from the bundled corpus (non-empty, single line, printable).
  std::ifstream f(SourceDir() + "/data/tokenizer-corpus/numbers_symbols_and_languages.txt");
  std::string line;
  int n = 0;
  while (std::getline(f, line) && n < 40) {
    if (!line.empty()) {
      lines.push_back(line);
      ++n;
    }
  }
  return lines;
}

void CheckModel(const std::string& model) {
  std::string error;
  auto proc = Processor::Open(model, &error);
  ASSERT_NE(proc, nullptr) << error;
  std::vector<std::string> lines = Lines();
  std::string dir = MakeTempDir("spm");
  std::string in = dir + "/in.txt";
  {
    std::ofstream o(in, std::ios::binary);
    // spm_encode reads one sentence per line: newlines inside a text cannot be represented.
    for (auto l : lines) {
      for (char& c : l) {
        if (c == '\n') c = ' ';
      }
      o << l << "\n";
    }
  }
  std::string ids_out = Run("spm_encode --model=" + model + " --output_format=id < " + in);
  std::vector<std::string> id_lines = absl::StrSplit(ids_out, '\n');
  std::ofstream ids_file(dir + "/ids.txt");
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string text = lines[i];
    for (char& c : text) {
      if (c == '\n') c = ' ';
    }
    ASSERT_LT(i, id_lines.size());
    std::vector<int> want;
    for (absl::string_view t : absl::StrSplit(id_lines[i], ' ', absl::SkipEmpty())) want.push_back(std::stoi(std::string(t)));
    std::vector<int> got;
    ASSERT_TRUE(proc->Encode(text, &got, &error)) << error;
    EXPECT_EQ(got, want) << "text: " << text;
    ids_file << id_lines[i] << "\n";
  }
  ids_file.close();
  std::string decoded = Run("spm_decode --model=" + model + " --input_format=id < " + dir + "/ids.txt");
  std::vector<std::string> dec_lines = absl::StrSplit(decoded, '\n');
  for (size_t i = 0; i < lines.size(); ++i) {
    std::vector<int> ids;
    for (absl::string_view t : absl::StrSplit(id_lines[i], ' ', absl::SkipEmpty())) ids.push_back(std::stoi(std::string(t)));
    std::string got;
    ASSERT_TRUE(proc->Decode(ids, &got, &error)) << error;
    ASSERT_LT(i, dec_lines.size());
    EXPECT_EQ(got, dec_lines[i]) << "ids of: " << lines[i];
  }
  std::system(("rm -rf " + dir).c_str());
}

TEST(SentencePieceConformanceTest, Llama2MatchesSpmEncodeAndDecode) {
  if (!HaveSpm()) GTEST_SKIP() << "spm_encode/spm_decode not installed (Debian package sentencepiece)";
  TP_REQUIRE_SHARED(model, "tokenizers/llama2/tokenizer.model");
  CheckModel(model);
}

TEST(SentencePieceConformanceTest, Stories260KMatchesSpmEncodeAndDecode) {
  if (!HaveSpm()) GTEST_SKIP() << "spm_encode/spm_decode not installed (Debian package sentencepiece)";
  TP_REQUIRE_SHARED(model, "models/stories260K/tokenizer.model");
  CheckModel(model);
}

TEST(SentencePieceConformanceTest, RefusesNonBpeAndGarbage) {
  std::string dir = MakeTempDir("spm-bad");
  {
    std::ofstream o(dir + "/garbage.model", std::ios::binary);
    o << "\xff\xff\xff not a protobuf";
  }
  std::string error;
  EXPECT_EQ(Processor::Open(dir + "/garbage.model", &error), nullptr);
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(Processor::Open(dir + "/missing.model", &error), nullptr);
  EXPECT_NE(error.find("cannot open"), std::string::npos) << error;
  std::system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace tpserve::testing
