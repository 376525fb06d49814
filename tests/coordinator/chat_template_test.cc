// Tulu chat template: hand-derived expected strings from the shipped Jinja (trim_blocks), EncodeChat ids,
// and the validation errors.
#include <string>
#include <vector>

#include "coordinator/tokenizer/chat_template.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

using ::testing::HasSubstr;

std::string Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  auto text = RenderTuluChat(messages, add_generation_prompt, "</s>");
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatTemplateTest, TemplateStringIsTheShippedOne) {
  TP_REQUIRE_SHARED(path, "tokenizers/llama2/tokenizer_config.json");
  const auto config = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(path));
  EXPECT_EQ(std::string(kTuluChatTemplate), config["chat_template"].get<std::string>());
}

// Expected strings worked out by hand from the Jinja: with trim_blocks the newline after every {% %} tag
// disappears and the newline after each {{ }} stays, so each turn ends in "\n".
TEST(ChatTemplateTest, SingleUserTurn) {
  EXPECT_EQ(Render({{"user", "Hello, who are you?"}}, true), "<|user|>\nHello, who are you?\n<|assistant|>\n");
  EXPECT_EQ(Render({{"user", "Hello, who are you?"}}, false), "<|user|>\nHello, who are you?\n");
}

TEST(ChatTemplateTest, AssistantTurnEndsWithEosThenNewline) {
  EXPECT_EQ(Render({{"assistant", "I am Tulu."}}, false), "<|assistant|>\nI am Tulu.</s>\n");
}

TEST(ChatTemplateTest, MultiTurn) {
  const std::vector<ChatMessage> chat = {
      {"user", "What is 2+2?"}, {"assistant", "4."}, {"user", "And 3+3?"}};
  EXPECT_EQ(Render(chat, true),
            "<|user|>\nWhat is 2+2?\n<|assistant|>\n4.</s>\n<|user|>\nAnd 3+3?\n<|assistant|>\n");
  // The generation prompt is only added after the last message, even when that is an assistant turn.
  EXPECT_EQ(Render({{"user", "a"}, {"assistant", "b"}}, true), "<|user|>\na\n<|assistant|>\nb</s>\n<|assistant|>\n");
}

// The shipped template drops system turns; Tulu 2's training data used "<|system|>\n...\n" (see header).
TEST(ChatTemplateTest, SystemTurnIsRenderedNotDropped) {
  EXPECT_EQ(Render({{"system", "Be brief."}, {"user", "Hi"}}, true),
            "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n");
}

TEST(ChatTemplateTest, ContentIsVerbatim) {
  EXPECT_EQ(Render({{"user", ""}}, true), "<|user|>\n\n<|assistant|>\n");
  EXPECT_EQ(Render({{"user", "  日本語 €\n\n</s> {{ x }}"}}, false), "<|user|>\n  日本語 €\n\n</s> {{ x }}\n");
}

TEST(ChatTemplateTest, Errors) {
  auto empty = RenderTuluChat({}, true, "</s>");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("messages"));

  auto role = RenderTuluChat({{"user", "hi"}, {"bot", "hello"}}, true, "</s>");
  EXPECT_EQ(role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(role.status().message()), HasSubstr("messages[1].role"));
  EXPECT_THAT(std::string(role.status().message()), HasSubstr("\"bot\""));

  auto upper = RenderTuluChat({{"User", "hi"}}, true, "</s>");
  EXPECT_EQ(upper.status().code(), absl::StatusCode::kInvalidArgument);

  auto utf8 = RenderTuluChat({{"system", "ok"}, {"user", std::string("bad \xC3\x28 byte")}}, true, "</s>");
  EXPECT_EQ(utf8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(utf8.status().message()), HasSubstr("messages[1].content"));
}

TEST(Utf8Test, IsValidUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii\n"));
  EXPECT_TRUE(IsValidUtf8("é € 日本語 🤖"));
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));                     // U+10FFFF
  EXPECT_TRUE(IsValidUtf8(std::string("a\0b", 3)));                 // NUL is a valid character
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));                            // truncated €
  EXPECT_FALSE(IsValidUtf8("\x82\xAC"));                            // continuation bytes alone
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));                            // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));                        // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));                        // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));                    // U+110000
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("ok\xC3\x28"));                          // bad continuation
}

class EncodeChatTest : public ::testing::Test {
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

// Reference case 1 of llama2_tokenizer.json is exactly this conversation rendered with the Tulu template.
TEST_F(EncodeChatTest, UserTurnMatchesReferenceIds) {
  TP_REQUIRE_SHARED(ref_path, "reference/llama2_tokenizer.json");
  const auto ref = nlohmann::json::parse(tpserve::testing::ReadFileOrDie(ref_path));
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    const std::string prefix = "<|user|>\n", suffix = "\n<|assistant|>\n";
    if (text.rfind(prefix, 0) != 0 || text.size() < prefix.size() + suffix.size() ||
        text.compare(text.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string content = text.substr(prefix.size(), text.size() - prefix.size() - suffix.size());
    auto ids = tok_->EncodeChat({{"user", content}}, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << text;
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// The "</s>" the template appends becomes EOS id 2, and what follows is a fresh SentencePiece segment, which
// (as with HF's legacy Llama tokenizer) starts with the lone dummy-prefix piece "▁" (29871) before "\n" (13).
TEST_F(EncodeChatTest, AssistantEosIsTheEosId) {
  auto ids = tok_->EncodeChat({{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}}, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<size_t> eos_at;
  for (size_t i = 0; i < ids->size(); ++i) {
    if ((*ids)[i] == 2) eos_at.push_back(i);
  }
  ASSERT_EQ(eos_at.size(), 1u);
  ASSERT_GE(ids->size(), eos_at[0] + 3);
  EXPECT_EQ((*ids)[eos_at[0] - 1], 10994);  // "Hello" (no "▁": it follows "\n"), as in reference case 1
  EXPECT_EQ((*ids)[eos_at[0] + 1], 29871);
  EXPECT_EQ((*ids)[eos_at[0] + 2], 13);
  EXPECT_EQ((*ids)[0], 1);
  // Decoding skips EOS and so recovers the rendered text without "</s>".
  EXPECT_EQ(tok_->Decode(*ids), "<|user|>\nHi\n<|assistant|>\nHello \n<|user|>\nBye\n<|assistant|>\n");
}

// A user typing "</s>" gets text tokens, not an end-of-sequence.
TEST_F(EncodeChatTest, LiteralEosInContentStaysText) {
  auto ids = tok_->EncodeChat({{"user", "say </s> please"}}, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  for (int32_t id : *ids) EXPECT_NE(id, 2);
  auto text = tok_->RenderChat({{"user", "say </s> please"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*ids, tok_->Encode(*text, true));
}

TEST_F(EncodeChatTest, PropagatesValidationErrors) {
  EXPECT_EQ(tok_->EncodeChat({}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok_->EncodeChat({{"tool", "x"}}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok_->RenderChat({{"user", "\xFF"}}, true).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tpserve::coordinator
