// Every chat template tpserve recognises, against references no one here wrote: the real template texts
// rendered by jinja2 and tokenized with SentencePiece by the rules of Hugging Face's slow LlamaTokenizer
// (tests/coordinator/chat_template_vectors.json, made by scripts/make-chat-template-vectors.py), with the Llama 2
// tokenizer from ../shared. Also: recognising templates, choosing one, and the errors.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/tokenizer/chat_template.h"
#include "coordinator/tokenizer/chat_template_select.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_env.h"

namespace tpserve::coordinator {
namespace {

using ::testing::HasSubstr;

nlohmann::json Vectors() {
  return nlohmann::json::parse(
      tpserve::testing::ReadFileOrDie(tpserve::testing::SourceDir() + "/tests/coordinator/chat_template_vectors.json"));
}

std::vector<ChatMessage> Messages(const nlohmann::json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

// The texts the script rendered are the texts tpserve recognises, each as its own kind.
TEST(ChatTemplateVectorsTest, EveryReferenceTemplateIsRecognised) {
  const auto vectors = Vectors();
  ASSERT_EQ(vectors["templates"].size(), 5u);
  for (const auto& t : vectors["templates"]) {
    const std::string name = t["name"];
    auto want = ChatTemplateFromName(name);
    ASSERT_TRUE(want.ok()) << want.status();
    auto got = IdentifyChatTemplate(t["chat_template"].get<std::string>());
    ASSERT_TRUE(got.has_value()) << name << " (" << t["origin"].get<std::string>() << ") not recognised";
    EXPECT_EQ(*got, *want) << name;
    EXPECT_EQ(ChatTemplateName(*got), name);
    // A trailing newline (TinyLlama's copy of Zephyr's) renders the same and is recognised too.
    EXPECT_EQ(IdentifyChatTemplate(t["chat_template"].get<std::string>() + "\n"), want.value());
  }
}

TEST(ChatTemplateVectorsTest, RenderingAndIdsEqualJinjaAndSlowTokenizer) {
  const std::string dir = tpserve::testing::SharedPath("tokenizers/llama2");
  if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers/llama2 is absent; skipping";
  const auto vectors = Vectors();
  std::map<std::string, std::unique_ptr<Tokenizer>> by_template;
  int checked = 0;
  for (const auto& c : vectors["cases"]) {
    const std::string name = c["template"];
    auto& tok = by_template[name];
    if (tok == nullptr) {
      auto loaded = Tokenizer::Load(dir, TokenizerOptions{name});
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      tok = std::move(*loaded);
    }
    const auto messages = Messages(c["messages"]);
    const bool add_generation_prompt = c["add_generation_prompt"];
    const std::string where = name + " conversation " + std::to_string(c["conversation"].get<int>()) +
                              (add_generation_prompt ? " +prompt" : "");
    auto text = tok->RenderChat(messages, add_generation_prompt);
    ASSERT_TRUE(text.ok()) << where << ": " << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << where;
    auto ids = tok->EncodeChat(messages, add_generation_prompt);
    ASSERT_TRUE(ids.ok()) << where << ": " << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << where;
    ++checked;
  }
  EXPECT_EQ(checked, 30);
}

// Tulu: BOS first, the template's "</s>" is EOS id 2, and a "</s>" typed by the user stays text.
TEST(ChatTemplateVectorsTest, TuluKeepsBosAndOnlyTemplateEos) {
  const std::string dir = tpserve::testing::SharedPath("tokenizers/llama2");
  if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers/llama2 is absent; skipping";
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->chat_template(), ChatTemplateKind::kTulu);  // the shipped tokenizer_config.json's
  auto ids = (*tok)->EncodeChat({{"user", "say </s> now"}, {"assistant", "ok"}, {"user", "<s>"}}, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ((*ids)[0], 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 2), 1);  // only the assistant turn's
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 1), 1);  // only the prepended BOS
}

// Llama-2-chat writes <s> itself: exactly one BOS at the start, one per user turn.
TEST(ChatTemplateVectorsTest, Llama2ChatNeverDoublesBos) {
  const std::string dir = tpserve::testing::SharedPath("tokenizers/llama2");
  if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers/llama2 is absent; skipping";
  auto tok = Tokenizer::Load(dir, TokenizerOptions{"llama-2-chat"});
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->EncodeChat({{"user", "a"}, {"assistant", "b"}, {"user", "c"}}, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_GE(ids->size(), 2u);
  EXPECT_EQ((*ids)[0], 1);
  EXPECT_NE((*ids)[1], 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 1), 2);
}

// A ChatML model whose <|im_start|> is an added token beyond tokenizer.model (OpenHermes: id 32000) is refused:
// tpserve would split the marker into text pieces the model never saw.
TEST(ChatTemplateVectorsTest, MarkerThatIsAnAddedTokenOutsideTheModelIsRefused) {
  const std::string dir = tpserve::testing::SharedPath("tokenizers/llama2");
  if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers/llama2 is absent; skipping";
  tpserve::testing::ScopedTempDir tmp("added-tokens");
  std::filesystem::create_symlink(dir + "/tokenizer.model", tmp.path + "/tokenizer.model");
  std::string chatml;
  const auto vectors = Vectors();
  for (const auto& t : vectors["templates"]) {
    if (t["name"] == "chatml") chatml = t["chat_template"];
  }
  nlohmann::json config = {{"chat_template", chatml},
                           {"added_tokens_decoder", {{"32000", {{"content", "<|im_end|>"}, {"special", true}}},
                                                     {"32001", {{"content", "<|im_start|>"}, {"special", false}}}}}};
  std::ofstream(tmp.path + "/tokenizer_config.json") << config.dump();
  auto refused = Tokenizer::Load(tmp.path);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("<|im_end|>"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("added token 32000"));
  // An added token the template does not write (Tulu's <pad>) is no reason to refuse.
  config = nlohmann::json{{"chat_template", std::string(kTuluChatTemplate)},
                          {"added_tokens_decoder", {{"32000", {{"content", "<pad>"}}}}}};
  std::ofstream(tmp.path + "/tokenizer_config.json") << config.dump();
  EXPECT_TRUE(Tokenizer::Load(tmp.path).ok());
}

TEST(ChatTemplateRenderTest, OrderingRulesOfLlama2ChatAndVicuna) {
  for (auto kind : {ChatTemplateKind::kLlama2Chat, ChatTemplateKind::kVicuna}) {
    auto starts_with_assistant = RenderChatTemplate(kind, {{"assistant", "x"}, {"user", "y"}}, true);
    EXPECT_EQ(starts_with_assistant.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(starts_with_assistant.status().message()), HasSubstr("messages[0].role"));
    auto two_users = RenderChatTemplate(kind, {{"system", "s"}, {"user", "a"}, {"user", "b"}}, true);
    EXPECT_EQ(two_users.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(two_users.status().message()), HasSubstr("messages[2].role"));
    EXPECT_THAT(std::string(two_users.status().message()), HasSubstr("alternate"));
    auto late_system = RenderChatTemplate(kind, {{"user", "a"}, {"system", "s"}}, true);
    EXPECT_EQ(late_system.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(late_system.status().message()), HasSubstr("system message only first"));
  }
  // Zephyr and ChatML render any order, like their Jinja.
  EXPECT_TRUE(RenderChatTemplate(ChatTemplateKind::kZephyr, {{"assistant", "x"}, {"system", "s"}}, true).ok());
  EXPECT_TRUE(RenderChatTemplate(ChatTemplateKind::kChatml, {{"user", "x"}, {"user", "y"}}, true).ok());
  // Common checks apply to every template.
  for (auto name : {"tulu", "llama-2-chat", "vicuna", "zephyr", "chatml"}) {
    auto kind = ChatTemplateFromName(name);
    ASSERT_TRUE(kind.ok());
    EXPECT_EQ(RenderChatTemplate(*kind, {}, true).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(RenderChatTemplate(*kind, {{"tool", "x"}}, true).status().message()),
                HasSubstr("messages[0].role")) << name;
    EXPECT_THAT(std::string(RenderChatTemplate(*kind, {{"user", "\xFF"}}, true).status().message()),
                HasSubstr("messages[0].content")) << name;
  }
}

TEST(ChatTemplateSelectTest, OverrideDefaultAndUnknown) {
  // No template in the model directory: Tulu, as tpserve has always rendered.
  auto none = SelectChatTemplate(std::nullopt, "m/tokenizer_config.json", "");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, ChatTemplateKind::kTulu);
  // The model's own, recognised.
  auto tulu = SelectChatTemplate(std::string(kTuluChatTemplate), "m/tokenizer_config.json", "");
  ASSERT_TRUE(tulu.ok());
  EXPECT_EQ(*tulu, ChatTemplateKind::kTulu);
  // A template tpserve cannot render is refused, naming the file and the flag.
  auto unknown = SelectChatTemplate(std::string("{{ messages[0]['content'] }}"), "m/tokenizer_config.json", "");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("m/tokenizer_config.json"));
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("--chat-template"));
  // Even a near miss (one space changed) is not guessed at.
  std::string near(kTuluChatTemplate);
  near.replace(near.find("'<|user|>"), 1, "\"");
  EXPECT_FALSE(IdentifyChatTemplate(near).has_value());
  // The flag wins over anything the model has.
  auto forced = SelectChatTemplate(std::string("{{ x }}"), "m/tokenizer_config.json", "zephyr");
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(*forced, ChatTemplateKind::kZephyr);
  auto bad_flag = SelectChatTemplate(std::nullopt, "m/tokenizer_config.json", "llama2");
  EXPECT_EQ(bad_flag.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_flag.status().message()), HasSubstr("--chat-template"));
  EXPECT_THAT(std::string(bad_flag.status().message()), HasSubstr("llama-2-chat"));  // lists the names
}

TEST(ChatTemplateSelectTest, ParsesTokenizerConfigShapes) {
  auto absent = ParseChatTemplateJson(R"({"bos_token": "<s>"})", "f");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
  auto null = ParseChatTemplateJson(R"({"chat_template": null})", "f");
  ASSERT_TRUE(null.ok());
  EXPECT_FALSE(null->has_value());
  auto text = ParseChatTemplateJson(R"({"chat_template": "abc"})", "f");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->value(), "abc");
  auto named = ParseChatTemplateJson(
      R"({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]})", "f");
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->value(), "d");
  for (const char* bad : {R"({"chat_template": 3})", R"({"chat_template": [{"name": "tool_use", "template": "t"}]})",
                          R"([1])", "{"}) {
    auto s = ParseChatTemplateJson(bad, "dir/tokenizer_config.json");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("dir/tokenizer_config.json")) << bad;
  }
}

// Python's str.strip() set, which llama-2-chat and vicuna apply to content.
TEST(Utf8Test, StripPythonWhitespace) {
  EXPECT_EQ(StripPythonWhitespace(""), "");
  EXPECT_EQ(StripPythonWhitespace(" \t\n\v\f\r"), "");
  EXPECT_EQ(StripPythonWhitespace("  a b  "), "a b");
  EXPECT_EQ(StripPythonWhitespace("\x1c\x1f" "a" "\xC2\x85"), "a");                   // U+001C, U+001F, U+0085
  EXPECT_EQ(StripPythonWhitespace("\xC2\xA0" "a" "\xE3\x80\x80"), "a");               // U+00A0, U+3000
  EXPECT_EQ(StripPythonWhitespace("\xE2\x80\x83" "a" "\xE2\x80\xA8\xE2\x80\xAF"), "a");  // U+2003, U+2028, U+202F
  EXPECT_EQ(StripPythonWhitespace("\xE2\x80\x8B" "a"), "\xE2\x80\x8B" "a");           // U+200B is not a space
  EXPECT_EQ(StripPythonWhitespace("日本 "), "日本");
  EXPECT_EQ(StripPythonWhitespace("\xF0\x9F\xA4\x96"), "\xF0\x9F\xA4\x96");           // 🤖 kept whole
}

}  // namespace
}  // namespace tpserve::coordinator
