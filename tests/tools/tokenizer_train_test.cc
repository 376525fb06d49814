// TrainTokenizer: produces a loadable Llama-style tokenizer from the bundled corpus that round-trips text.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/tokenizer/detokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "tools/tokenizer/train_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string CorpusDir() { return tpserve::testing::SourceDir() + "/data/tokenizer-corpus"; }

std::vector<std::string> CorpusLines() {
  std::vector<std::string> lines;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(CorpusDir())) {
    if (e.path().extension() == ".txt") files.push_back(e.path());
  }
  for (const auto& f : files) {
    std::istringstream in(tpserve::testing::ReadFileOrDie(f.string()));
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
  }
  return lines;
}

// One training run shared by the tests below (training takes a few seconds).
class TrainedTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(tpserve::testing::MakeTempDir("tok-train"));
    TrainTokenizerOptions options;
    options.out_dir = *dir_;
    options.vocab_size = 4096;
    options.corpus_dir = CorpusDir();
    status_ = new absl::Status(TrainTokenizer(options, &trained_vocab_));
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
    delete status_;
  }
  void SetUp() override { ASSERT_TRUE(status_->ok()) << *status_; }

  static std::string* dir_;
  static absl::Status* status_;
  static int trained_vocab_;
};
std::string* TrainedTokenizerTest::dir_ = nullptr;
absl::Status* TrainedTokenizerTest::status_ = nullptr;
int TrainedTokenizerTest::trained_vocab_ = 0;

TEST_F(TrainedTokenizerTest, WritesHuggingFaceLayout) {
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    EXPECT_TRUE(fs::exists(*dir_ + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(*dir_ + "/tokenizer.vocab"));
  const auto config = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(*dir_ + "/tokenizer_config.json"));
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_EQ(config["eos_token"], "</s>");
  TP_REQUIRE_SHARED(tulu, "tokenizers/llama2/tokenizer_config.json");
  const auto shipped = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(tulu));
  EXPECT_EQ(config["chat_template"], shipped["chat_template"]);
  const auto map = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(*dir_ + "/special_tokens_map.json"));
  EXPECT_EQ(map["bos_token"], "<s>");
  EXPECT_EQ(map["eos_token"], "</s>");
}

TEST_F(TrainedTokenizerTest, LoadsWithLlamaIdsAndBytePieces) {
  auto tok = Tokenizer::Load(*dir_);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.vocab_size(), trained_vocab_);
  EXPECT_LE(trained_vocab_, 4096);
  EXPECT_GT(trained_vocab_, 259 + 100);  // specials + bytes + a real merge table
  EXPECT_EQ(t.IdToPiece(0), "<unk>");
  EXPECT_EQ(t.IdToPiece(1), "<s>");
  EXPECT_EQ(t.IdToPiece(2), "</s>");
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.IdToPiece(3), "<0x00>");  // byte pieces follow the specials, as in Llama
  EXPECT_EQ(t.IdToPiece(3 + 0xE2), "<0xE2>");
  // split_digits: every digit is its own piece.
  for (int32_t id : t.Encode("2024", false)) EXPECT_LE(t.IdToPiece(id).size(), 4u) << t.IdToPiece(id);
  // A character the corpus never saw goes through byte fallback, not <unk>.
  const std::vector<int32_t> ids = t.Encode("ꙮ", false);
  for (int32_t id : ids) EXPECT_NE(id, 0);
  EXPECT_EQ(t.Decode(ids), "ꙮ");
  EXPECT_TRUE(t.strips_leading_space());  // add_dummy_prefix
}

TEST_F(TrainedTokenizerTest, RoundTripsCorpusLinesAndStreams) {
  auto tok = Tokenizer::Load(*dir_);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<std::string> lines = CorpusLines();
  ASSERT_GT(lines.size(), 100u);
  int non_ascii = 0;
  for (const std::string& line : lines) {
    const std::vector<int32_t> ids = (*tok)->Encode(line, true);
    ASSERT_EQ((*tok)->Decode(ids), line);
    for (unsigned char c : line) non_ascii += c >= 0x80;
    if (line.size() < 400) {  // streaming decode agrees too
      IncrementalDetokenizer detok(**tok, {1});
      std::string streamed;
      for (size_t i = 1; i < ids.size(); ++i) streamed += detok.Add(ids[i]);
      streamed += detok.Flush();
      ASSERT_EQ(streamed, line);
    }
  }
  EXPECT_GT(non_ascii, 0) << "the corpus should exercise byte fallback";
}

// The model file embeds its own output path (trainer_spec.model_prefix), so compare vocabularies, not bytes.
TEST(TrainTokenizerTest, IsDeterministicAndHandlesHugeVocabRequests) {
  std::vector<std::vector<std::string>> vocabs;
  for (int run = 0; run < 2; ++run) {
    const std::string dir = tpserve::testing::MakeTempDir("tok-det");
    TrainTokenizerOptions options;
    options.out_dir = dir;
    options.vocab_size = 32000;  // more than the corpus supports: the limit is soft
    options.corpus_dir = CorpusDir();
    int vocab = 0;
    const absl::Status s = TrainTokenizer(options, &vocab);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_GT(vocab, 259);
    EXPECT_LT(vocab, 32000);
    auto tok = Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->vocab_size(), vocab);
    std::vector<std::string> pieces;
    for (int id = 0; id < vocab; ++id) pieces.push_back((*tok)->IdToPiece(id));
    vocabs.push_back(std::move(pieces));
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  EXPECT_TRUE(vocabs[0] == vocabs[1]) << "two runs on the same corpus produced different vocabularies";
}

TEST(TrainTokenizerTest, DefaultCorpusIsTheSourceTreeOne) {
  EXPECT_EQ(fs::path(DefaultTokenizerCorpusDir()), fs::path(CorpusDir()));
}

TEST(TrainTokenizerTest, BadOptionsAreInvalidArgument) {
  const std::string out = tpserve::testing::MakeTempDir("tok-bad");
  TrainTokenizerOptions options;
  options.out_dir = out;
  options.vocab_size = 4096;
  options.corpus_dir = out + "/no-such-corpus";
  absl::Status s = TrainTokenizer(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no-such-corpus"));

  const std::string empty_corpus = tpserve::testing::MakeTempDir("tok-emptycorpus");
  options.corpus_dir = empty_corpus;
  s = TrainTokenizer(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr(".txt"));

  options.corpus_dir = CorpusDir();
  options.vocab_size = 100;
  s = TrainTokenizer(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("vocab_size"));

  options.vocab_size = 4096;
  options.out_dir = "";
  EXPECT_EQ(TrainTokenizer(options).code(), absl::StatusCode::kInvalidArgument);
  std::error_code ec;
  fs::remove_all(out, ec);
  fs::remove_all(empty_corpus, ec);
}

}  // namespace
}  // namespace tpserve::coordinator
