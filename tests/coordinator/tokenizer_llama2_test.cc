// Tokenizer against the Llama 2 reference ids (HF LlamaTokenizer) and the special-token config rules.
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "coordinator/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

void CopyFile(const std::string& from, const std::string& to) {
  WriteText(to, tpserve::testing::ReadFileOrDie(from));
}

// A MakeTempDir() folder that is removed when the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) : path_(tpserve::testing::MakeTempDir(tag)) {}
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::unique_ptr<Tokenizer> LoadOrFail(const std::string& dir) {
  auto tok = Tokenizer::Load(dir);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(TokenizerLlama2Test, MatchesReferenceIdsPiecesAndDecoding) {
  TP_REQUIRE_SHARED(dir, "tokenizers/llama2");
  TP_REQUIRE_SHARED(ref_path, "reference/llama2_tokenizer.json");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  const auto ref = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(ref_path));
  EXPECT_EQ(tok->vocab_size(), ref["vocab_size"].get<int>());
  EXPECT_EQ(tok->bos_id(), ref["bos_id"].get<int>());
  EXPECT_EQ(tok->eos_id(), ref["eos_id"].get<int>());
  EXPECT_EQ(tok->Encode("\n", false).back(), ref["newline_id"].get<int>());
  ASSERT_FALSE(ref["cases"].empty());
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto want_ids = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tok->Encode(text, /*add_bos=*/true);
    EXPECT_EQ(ids, want_ids);
    const auto pieces = c["pieces"].get<std::vector<std::string>>();
    ASSERT_EQ(pieces.size(), want_ids.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      EXPECT_EQ(tok->IdToPiece(want_ids[i]), pieces[i]) << "id " << want_ids[i];
      EXPECT_EQ(tok->PieceToId(pieces[i]), want_ids[i]) << "piece " << pieces[i];
    }
    EXPECT_EQ(tok->Decode(want_ids), c["decoded"].get<std::string>());
    if (c["round_trip_ok"].get<bool>()) {
      EXPECT_EQ(tok->Decode(ids), text);
    }
    // Without BOS the ids are the same minus the first.
    std::vector<int32_t> no_bos(want_ids.begin() + 1, want_ids.end());
    EXPECT_EQ(tok->Encode(text, /*add_bos=*/false), no_bos);
  }
}

TEST(TokenizerLlama2Test, DecodeSkipsBosEosAndOutOfRangeIds) {
  TP_REQUIRE_SHARED(dir, "tokenizers/llama2");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  // 15043 "▁Hello", 3186 "▁world" (reference case "Hello world").
  EXPECT_EQ(tok->Decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(tok->Decode({15043, -5, 32000, 1 << 30, 3186}), "Hello world");
  EXPECT_EQ(tok->Decode({}), "");
  EXPECT_EQ(tok->IdToPiece(-1), "");
  EXPECT_EQ(tok->IdToPiece(32000), "");
  EXPECT_EQ(tok->IdToPiece(1), "<s>");
  EXPECT_EQ(tok->PieceToId("no-such-piece-xyz"), -1);
  EXPECT_EQ(tok->PieceToId("<unk>"), 0);
  EXPECT_EQ(tok->eos_token(), "</s>");
}

TEST(TokenizerLlama2Test, InvalidUtf8InputDoesNotCrash) {
  TP_REQUIRE_SHARED(dir, "tokenizers/llama2");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = tok->Encode(std::string("ab\xff\xfe" "cd\xe2\x82", 8), true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  for (int32_t id : ids) EXPECT_LT(id, tok->vocab_size());
}

TEST(TokenizerLlama2Test, ConcurrentConstUseGivesSameResults) {
  TP_REQUIRE_SHARED(dir, "tokenizers/llama2");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  const std::string text = "The quick brown fox, 日本語 and €5 🤖 jumps.\n  Twice.";
  const std::vector<int32_t> want = tok->Encode(text, true);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        if (tok->Encode(text, true) != want || tok->Decode(want) != text) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

// The Tulu release ships generation_config.json with bos 0 / eos 1; the tokenizer files say 1 / 2.
TEST(TokenizerLoadTest, IgnoresWrongGenerationConfig) {
  TP_REQUIRE_SHARED(src, "tokenizers/llama2");
  TempDir dir_tmp("tok-genconfig");
  const std::string& dir = dir_tmp.path();
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    CopyFile(src + "/" + f, dir + "/" + f);
  }
  WriteText(dir + "/generation_config.json", R"({"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0})");
  WriteText(dir + "/config.json", R"({"bos_token_id": 0, "eos_token_id": 1})");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->Encode("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
}

TEST(TokenizerLoadTest, FallsBackToSentencePieceIdsWithoutConfig) {
  TP_REQUIRE_SHARED(src, "tokenizers/llama2/tokenizer.model");
  TempDir dir_tmp("tok-bare");
  const std::string& dir = dir_tmp.path();
  CopyFile(src, dir + "/tokenizer.model");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
}

TEST(TokenizerLoadTest, SpecialTokensMapOverridesConfigAndAcceptsObjects) {
  TP_REQUIRE_SHARED(src, "tokenizers/llama2/tokenizer.model");
  TempDir dir_tmp("tok-override");
  const std::string& dir = dir_tmp.path();
  CopyFile(src, dir + "/tokenizer.model");
  WriteText(dir + "/tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>"})");
  // <0x0A> is id 13 (the reference's newline_id).
  WriteText(dir + "/special_tokens_map.json", R"({"eos_token": {"content": "<0x0A>", "lstrip": false}})");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 13);
  EXPECT_EQ(tok->eos_token(), "<0x0A>");
}

TEST(TokenizerLoadTest, ErrorsNameTheProblem) {
  TempDir empty_tmp("tok-empty");
  const std::string& empty = empty_tmp.path();
  auto missing = Tokenizer::Load(empty);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("tokenizer.model"));

  TempDir garbage_tmp("tok-garbage");
  const std::string& garbage = garbage_tmp.path();
  WriteText(garbage + "/tokenizer.model", "this is not a protobuf");
  auto bad_model = Tokenizer::Load(garbage);
  EXPECT_EQ(bad_model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_model.status().message()), HasSubstr("tokenizer.model"));

  TP_REQUIRE_SHARED(src, "tokenizers/llama2/tokenizer.model");
  TempDir bad_json_tmp("tok-badjson");
  const std::string& bad_json = bad_json_tmp.path();
  CopyFile(src, bad_json + "/tokenizer.model");
  WriteText(bad_json + "/tokenizer_config.json", "{\"bos_token\": ");
  auto s1 = Tokenizer::Load(bad_json);
  EXPECT_EQ(s1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s1.status().message()), HasSubstr("tokenizer_config.json"));

  TempDir unknown_tmp("tok-unknown");
  const std::string& unknown = unknown_tmp.path();
  CopyFile(src, unknown + "/tokenizer.model");
  WriteText(unknown + "/special_tokens_map.json", R"({"bos_token": "<|begin_of_text|>"})");
  auto s2 = Tokenizer::Load(unknown);
  EXPECT_EQ(s2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s2.status().message()), HasSubstr("<|begin_of_text|>"));

  TempDir wrong_type_tmp("tok-wrongtype");
  const std::string& wrong_type = wrong_type_tmp.path();
  CopyFile(src, wrong_type + "/tokenizer.model");
  WriteText(wrong_type + "/tokenizer_config.json", R"({"eos_token": 2})");
  auto s3 = Tokenizer::Load(wrong_type);
  EXPECT_EQ(s3.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s3.status().message()), HasSubstr("eos_token"));
}

// llama2.c's tok512 tokenizer that ships with stories260K; prompt ids from the run.c reference.
TEST(TokenizerStories260KTest, EncodesReferencePrompts) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  auto tok = LoadOrFail(dir);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->Encode("Once upon a time", true), (std::vector<int32_t>{1, 403, 407, 261, 378}));
  const auto ref = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(ref_path));
  ASSERT_FALSE(ref["cases"].empty());
  for (const auto& c : ref["cases"]) {
    const std::string prompt = c["prompt"];
    const auto prompt_ids = c["prompt_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->Encode(prompt, true), prompt_ids) << prompt;
    EXPECT_EQ(tok->Decode(prompt_ids), prompt);
  }
}

}  // namespace
}  // namespace tpserve::coordinator
