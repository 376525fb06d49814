// IncrementalDetokenizer against SentencePiece's whole-sequence decode (Tokenizer::Decode), on hand-picked
// UTF-8 / leading-space cases, the stories260K reference generations and random id streams.
#include <random>
#include <string>
#include <vector>

#include "coordinator/tokenizer/detokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

using ::testing::ElementsAre;

// Byte-fallback ids in Llama's vocabulary: <0x00> is id 3.
int32_t ByteId(int b) { return 3 + b; }

struct Streamed {
  std::vector<std::string> chunks;  // one per Add(), then Flush()'s
  std::string all;
};

Streamed Stream(const Tokenizer& tok, const std::vector<int32_t>& prompt, const std::vector<int32_t>& gen) {
  IncrementalDetokenizer detok(tok, prompt);
  Streamed s;
  for (int32_t id : gen) {
    s.chunks.push_back(detok.Add(id));
    EXPECT_TRUE(IsValidUtf8(s.chunks.back())) << "chunk after id " << id;
    s.all += s.chunks.back();
  }
  s.chunks.push_back(detok.Flush());
  EXPECT_TRUE(IsValidUtf8(s.chunks.back()));
  s.all += s.chunks.back();
  EXPECT_EQ(detok.text(), s.all);
  EXPECT_EQ(detok.num_tokens(), static_cast<int64_t>(gen.size()));
  return s;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// What the stream after `prompt` must produce: the whole decode minus the prompt's decode.
std::string Expected(const Tokenizer& tok, const std::vector<int32_t>& prompt, const std::vector<int32_t>& gen) {
  const std::string whole = tok.Decode(Concat(prompt, gen));
  const std::string head = tok.Decode(prompt);
  EXPECT_EQ(whole.compare(0, head.size(), head), 0) << "prompt decode is not a prefix";
  return whole.substr(std::min(head.size(), whole.size()));
}

class DetokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = tpserve::testing::SharedPath("tokenizers/llama2");
    if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers/llama2 is absent; skipping";
    auto tok = Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(DetokenizerTest, EuroSplitOverThreeByteTokens) {
  ASSERT_EQ(tok_->IdToPiece(ByteId(0xE2)), "<0xE2>");
  const std::vector<int32_t> gen = {ByteId(0xE2), ByteId(0x82), ByteId(0xAC)};
  Streamed s = Stream(*tok_, {1}, gen);
  EXPECT_THAT(s.chunks, ElementsAre("", "", "€", ""));
  EXPECT_EQ(s.all, tok_->Decode(gen));
}

TEST_F(DetokenizerTest, EmojiBytesAfterText) {
  // "Hi 🤖": "▁Hi", "▁", <0xF0><0x9F><0xA4><0x96> as in the Llama vocab.
  const std::vector<int32_t> gen = tok_->Encode("Hi 🤖", false);
  ASSERT_GE(gen.size(), 5u);
  Streamed s = Stream(*tok_, {1}, gen);
  EXPECT_EQ(s.all, "Hi 🤖");
  EXPECT_EQ(s.all, tok_->Decode(gen));
  for (size_t i = gen.size() - 4; i + 1 < gen.size(); ++i) EXPECT_EQ(s.chunks[i], "") << i;
  EXPECT_EQ(s.chunks[gen.size() - 1], "🤖");
}

TEST_F(DetokenizerTest, IncompleteBytesFlushAsReplacementCharacters) {
  const std::vector<int32_t> gen = {ByteId(0xE2), ByteId(0x82)};
  Streamed s = Stream(*tok_, {1}, gen);
  EXPECT_THAT(s.chunks, ElementsAre("", "", "\xEF\xBF\xBD\xEF\xBF\xBD"));
  EXPECT_EQ(s.all, tok_->Decode(gen));
}

TEST_F(DetokenizerTest, BrokenBytesBeforeTextMatchSentencePiece) {
  // E2 then 'A' (as a byte) then a word: E2 can never complete, so it is one U+FFFD, then "A".
  const std::vector<int32_t> gen = {ByteId(0xE2), ByteId(0x41), 3186 /* ▁world */, ByteId(0x80)};
  Streamed s = Stream(*tok_, {1}, gen);
  EXPECT_EQ(s.all, tok_->Decode(gen));
  EXPECT_EQ(s.all, "\xEF\xBF\xBD" "A world\xEF\xBF\xBD");
}

// SentencePiece drops the dummy-prefix "▁" only at the very start of the text. After a prompt, the first
// generated "▁world" is a real space.
TEST_F(DetokenizerTest, LeadingSpaceAfterPromptIsReal) {
  const std::vector<int32_t> prompt = tok_->Encode("Hello", true);  // [1, ▁Hello]
  Streamed s = Stream(*tok_, prompt, {3186});
  EXPECT_EQ(s.all, " world");
  EXPECT_EQ(tok_->Decode(Concat(prompt, {3186})), "Hello world");
  // With no text before it (empty or BOS-only prompt) it is the dummy prefix and is dropped, as in Decode.
  EXPECT_EQ(Stream(*tok_, {}, {3186}).all, "world");
  EXPECT_EQ(Stream(*tok_, {1}, {3186, 3186}).all, "world world");
  EXPECT_EQ(tok_->Decode({3186}), "world");
}

// After a chat prompt ending in "\n" the model's first piece normally has no "▁" (reference case 1:
// "\nHello" -> 13, 10994), so the stream equals Decode(generated ids).
TEST_F(DetokenizerTest, ChatPromptStreamsEqualDecodeOfGenerated) {
  auto prompt = tok_->EncodeChat({{"user", "Say hi"}}, true);
  ASSERT_TRUE(prompt.ok());
  for (const char* answer : {"Hello! I am Tulu.\n\n- one\n- two", "€5, 日本語 🤖 and   spaces.",
                                    "\nnew line first", "Ünïcödé ✓"}) {
    // How the model would emit it: tokens of "\n" + answer after the "\n" piece, i.e. without a dummy "▁".
    std::vector<int32_t> with_nl = tok_->Encode(std::string("\n") + answer, false);
    ASSERT_GE(with_nl.size(), 2u);
    ASSERT_EQ(with_nl[0], 29871);  // dummy "▁"
    ASSERT_EQ(with_nl[1], 13);     // "\n"
    const std::vector<int32_t> gen(with_nl.begin() + 2, with_nl.end());
    SCOPED_TRACE(answer);
    Streamed s = Stream(*tok_, *prompt, Concat(gen, {2}));
    EXPECT_EQ(s.all, answer);
    EXPECT_EQ(s.all, tok_->Decode(gen));
    EXPECT_EQ(s.all, Expected(*tok_, *prompt, gen));
  }
}

TEST_F(DetokenizerTest, TextCasesMatchWholeDecode) {
  const std::vector<std::string> texts = {
      "Hello world", " leading space", "  two leading spaces", "€", "price: 12.50€ (≈ ¥1,900)", "日本語のテキスト",
      "emoji 🤖👩‍💻 done", "tabs\tand\nnewlines\n\n", "a\u00A0b", "x" };
  const std::vector<std::vector<int32_t>> prompts = {{}, {1}, tok_->Encode("Q:", true), {1, 29871}};
  for (const auto& prompt : prompts) {
    for (const auto& text : texts) {
      SCOPED_TRACE("text: " + text + " prompt size " + std::to_string(prompt.size()));
      const std::vector<int32_t> gen = tok_->Encode(text, false);
      Streamed s = Stream(*tok_, prompt, gen);
      EXPECT_EQ(s.all, Expected(*tok_, prompt, gen));
      if (prompt.size() <= 1) {
        EXPECT_EQ(s.all, tok_->Decode(gen));
      }
    }
  }
}

// Random id streams, weighted toward byte pieces, with control, <unk> and out-of-range ids mixed in.
TEST_F(DetokenizerTest, RandomStreamsMatchWholeDecode) {
  std::mt19937 rng(1234);
  const std::vector<std::vector<int32_t>> prompts = {
      {}, {1}, {1, 29871}, tok_->Encode("Hello", true), tok_->Encode("日本", true), {1, 0}};
  const std::vector<int> lead_bytes = {0xC3, 0xE2, 0xE6, 0xF0, 0xED, 0xC0, 0xF4, 0xF5, 0x41};
  for (int trial = 0; trial < 400; ++trial) {
    const auto& prompt = prompts[trial % prompts.size()];
    std::vector<int32_t> gen;
    const int n = 1 + static_cast<int>(rng() % 24);
    for (int i = 0; i < n; ++i) {
      const int r = static_cast<int>(rng() % 100);
      if (r < 25) {
        gen.push_back(ByteId(0x80 + static_cast<int>(rng() % 64)));  // continuation byte
      } else if (r < 40) {
        gen.push_back(ByteId(lead_bytes[rng() % lead_bytes.size()]));
      } else if (r < 45) {
        gen.push_back(ByteId(static_cast<int>(rng() % 256)));
      } else if (r < 48) {
        gen.push_back(static_cast<int32_t>(rng() % 3));  // <unk>, <s>, </s>
      } else if (r < 50) {
        gen.push_back(r == 48 ? 29871 : 32000 + static_cast<int32_t>(rng() % 5));  // lone "▁" / out of range
      } else {
        gen.push_back(259 + static_cast<int32_t>(rng() % (32000 - 259)));
      }
    }
    SCOPED_TRACE("trial " + std::to_string(trial));
    Streamed s = Stream(*tok_, prompt, gen);
    ASSERT_EQ(s.all, Expected(*tok_, prompt, gen));
    if (prompt.size() <= 1) {
      ASSERT_EQ(s.all, tok_->Decode(gen));
    }
  }
}

TEST_F(DetokenizerTest, AddAfterFlushContinues) {
  IncrementalDetokenizer detok(*tok_, tok_->Encode("Hello", true));
  EXPECT_EQ(detok.Add(ByteId(0xE2)), "");
  EXPECT_EQ(detok.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.Add(3186), " world");
  EXPECT_EQ(detok.Flush(), "");
  EXPECT_EQ(detok.text(), "\xEF\xBF\xBD world");
}

// stories260K's own tokenizer (tok512) on the run.c reference generations; they run past BOS (id 1).
TEST(DetokenizerStories260KTest, ReferenceGenerationsMatchWholeDecode) {
  TP_REQUIRE_SHARED(dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto ref = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(ref_path));
  for (const auto& c : ref["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto gen = c["generated_ids"].get<std::vector<int32_t>>();
    Streamed s = Stream(**tok, prompt, gen);
    EXPECT_EQ(s.all, Expected(**tok, prompt, gen));
    EXPECT_FALSE(s.all.empty());
    EXPECT_EQ(c["prompt"].get<std::string>() + s.all, (*tok)->Decode(Concat(prompt, gen)));
  }
}

}  // namespace
}  // namespace tpserve::coordinator
