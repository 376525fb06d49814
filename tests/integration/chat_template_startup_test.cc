// The model's own chat template through the real binary: a recognised template in tokenizer_config.json is what
// chat requests are rendered with, --chat-template overrides it, and a template tpserve cannot render (or an
// unknown --chat-template name) is refused at startup with a message naming the flag.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "coordinator/tokenizer/chat_template.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;
namespace fs = std::filesystem;

constexpr char kUnknownTemplate[] =
    "{% for message in messages %}{{ '### ' + message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}";

// ../shared/models/stories260K seen through symlinks, with tokenizer_config.json's chat_template set to TEMPLATE.
std::string ModelWithTemplate(const std::string& model_dir, const std::string& dir, const std::string& tmpl) {
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    if (entry.path().filename() == "tokenizer_config.json") continue;
    fs::create_symlink(entry.path(), fs::path(dir) / entry.path().filename());
  }
  auto config = nlohmann::json::parse(ReadFileOrDie(model_dir + "/tokenizer_config.json"));
  config["chat_template"] = tmpl;
  std::ofstream(dir + "/tokenizer_config.json") << config.dump(1);
  return dir;
}

// Greedy chat request; returns the prompt ids the server encoded.
std::vector<int32_t> ServedPromptIds(const ServerProcess& server, const std::vector<coordinator::ChatMessage>& chat) {
  v1::GenerateRequest req;
  for (const auto& m : chat) {
    auto* msg = req.mutable_chat()->add_messages();
    msg->set_role(m.role);
    msg->set_content(m.content);
  }
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_new_tokens(2);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateResponse resp;
  grpc::Status s = server.NewStub()->Generate(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message() << "\n" << server.ReadLog();
  return {resp.prompt_token_ids().begin(), resp.prompt_token_ids().end()};
}

const std::vector<coordinator::ChatMessage> kChat = {
    {"system", "Be brief."}, {"user", "Once upon a time"}, {"assistant", "there was a cat."}, {"user", "And then?"}};

std::vector<int32_t> Expected(const std::string& dir, const std::string& name) {
  auto tok = coordinator::Tokenizer::Load(dir, coordinator::TokenizerOptions{name});
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return {};
  auto ids = (*tok)->EncodeChat(kChat, true);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(ChatTemplateStartupTest, UnknownTemplateIsRefusedNamingTheFlag) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ScopedTempDir tmp("unknown-template");
  ServerProcess server({ModelWithTemplate(model_dir, tmp.path, kUnknownTemplate), 1, {}, absl::Seconds(60)});
  ASSERT_FALSE(server.Start().ok()) << "a template tpserve cannot render must not be served";
  const std::string log = server.ReadLog();
  EXPECT_NE(log.find("not one tpserve can render"), std::string::npos) << log;
  EXPECT_NE(log.find("--chat-template"), std::string::npos) << log;
  EXPECT_NE(log.find("tokenizer_config.json"), std::string::npos) << log;
  EXPECT_EQ(server.PollExit(), 1);
}

TEST(ChatTemplateStartupTest, UnknownFlagValueIsRefused) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 1, {"--chat_template=llama2"}, absl::Seconds(60)});
  ASSERT_FALSE(server.Start().ok());
  const std::string log = server.ReadLog();
  EXPECT_NE(log.find("--chat-template: unknown chat template \"llama2\""), std::string::npos) << log;
  EXPECT_NE(log.find("llama-2-chat"), std::string::npos) << log;  // the message lists the names
  EXPECT_EQ(server.PollExit(), 1);
}

// The Zephyr template in tokenizer_config.json is what the server renders chat with (not Tulu).
TEST(ChatTemplateStartupTest, ModelsOwnTemplateIsServed) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ScopedTempDir tmp("zephyr-template");
  nlohmann::json vectors = nlohmann::json::parse(ReadFileOrDie(SourceDir() + "/tests/coordinator/chat_template_vectors.json"));
  std::string zephyr;
  for (const auto& t : vectors["templates"]) {
    if (t["name"] == "zephyr") zephyr = t["chat_template"];
  }
  ASSERT_FALSE(zephyr.empty());
  const std::string dir = ModelWithTemplate(model_dir, tmp.path, zephyr);
  ServerProcess server({dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const std::vector<int32_t> want = Expected(dir, "zephyr");
  EXPECT_EQ(ServedPromptIds(server, kChat), want);
  EXPECT_NE(want, Expected(dir, "tulu"));
  EXPECT_NE(server.ReadLog().find("chat template: zephyr (the model's)"), std::string::npos) << server.ReadLog();
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

// --chat-template serves a model whose own template tpserve does not know.
TEST(ChatTemplateStartupTest, FlagOverridesAnUnknownTemplate) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ScopedTempDir tmp("override-template");
  const std::string dir = ModelWithTemplate(model_dir, tmp.path, kUnknownTemplate);
  ServerProcess server({dir, 1, {"--chat_template=llama-2-chat"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  const std::vector<int32_t> want = Expected(dir, "llama-2-chat");
  EXPECT_EQ(ServedPromptIds(server, kChat), want);
  EXPECT_NE(want, Expected(dir, "tulu"));
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

}  // namespace
}  // namespace tpserve::testing
