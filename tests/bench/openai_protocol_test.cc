// The OpenAI request bodies tpserve-bench sends and how it reads streamed chunks, errors and /v1/models,
// checked against the shapes OpenAI documents (and vLLM sends).
#include "bench/loadgen/openai_protocol.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {
namespace {

using nlohmann::json;

RequestSpec TokenSpec() {
  RequestSpec s;
  for (int id : {1, 15, 16, 17}) s.request.mutable_token_ids()->add_ids(id);
  s.request.mutable_stopping()->set_max_new_tokens(9);
  s.request.mutable_stopping()->set_ignore_eos(true);
  s.output_len = 9;
  return s;
}

TEST(OpenAiProtocolTest, CompletionsBodySendsTokenIdsAndAsksForUsage) {
  auto body = BuildOpenAiBody(TokenSpec(), OpenAiEndpoint::kCompletions, "m1", nullptr);
  ASSERT_TRUE(body.ok()) << body.status();
  const json j = json::parse(*body);
  EXPECT_EQ(j["model"], "m1");
  EXPECT_EQ(j["stream"], true);
  EXPECT_EQ(j["stream_options"]["include_usage"], true);
  EXPECT_EQ(j["max_tokens"], 9);
  EXPECT_EQ(j["ignore_eos"], true);
  EXPECT_EQ(j["temperature"], 0.0);
  EXPECT_FALSE(j.contains("seed"));
  EXPECT_EQ(j["prompt"], json::array({1, 15, 16, 17}));
}

TEST(OpenAiProtocolTest, ChatBodyDecodesTokenIdsAndKeepsMessages) {
  auto decode = [](absl::Span<const int32_t> ids) { return "decoded " + std::to_string(ids.size()); };
  auto body = BuildOpenAiBody(TokenSpec(), OpenAiEndpoint::kChat, "m1", decode);
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(json::parse(*body)["messages"],
            json::parse(R"([{"role": "user", "content": "decoded 4"}])"));
  EXPECT_FALSE(BuildOpenAiBody(TokenSpec(), OpenAiEndpoint::kChat, "m1", nullptr).ok());

  RequestSpec chat;
  auto* m = chat.request.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("be brief");
  chat.request.mutable_sampling()->set_temperature(0.7f);
  chat.request.mutable_sampling()->set_seed(42);
  body = BuildOpenAiBody(chat, OpenAiEndpoint::kChat, "m1", nullptr);
  ASSERT_TRUE(body.ok());
  const json j = json::parse(*body);
  EXPECT_EQ(j["messages"], json::parse(R"([{"role": "system", "content": "be brief"}])"));
  EXPECT_EQ(j["seed"], 21);
  // Completions cannot carry messages: the error names the way out.
  auto bad = BuildOpenAiBody(chat, OpenAiEndpoint::kCompletions, "m1", nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--endpoint chat"), std::string::npos);
}

TEST(OpenAiProtocolTest, ChatChunksCountContentUsageAndDone) {
  RequestRecord r;
  bool done = false;
  int added = 0;
  // vLLM's first chat chunk carries only the role: not a token.
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})",
                               OpenAiEndpoint::kChat, 0.5, &r, &done, &added).ok());
  EXPECT_EQ(added, 0);
  EXPECT_LT(r.first_token_s, 0);
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[{"index":0,"delta":{"content":"Hi"}}]})", OpenAiEndpoint::kChat,
                               0.75, &r, &done, &added).ok());
  EXPECT_EQ(added, 1);
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"length"}]})",
                               OpenAiEndpoint::kChat, 1.0, &r, &done, &added).ok());
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,
                                   "total_tokens":14,"prompt_tokens_details":{"cached_tokens":8}}})",
                               OpenAiEndpoint::kChat, 1.1, &r, &done, &added).ok());
  EXPECT_FALSE(done);
  ASSERT_TRUE(ApplyOpenAiEvent("[DONE]", OpenAiEndpoint::kChat, 1.2, &r, &done, &added).ok());
  EXPECT_TRUE(done);
  EXPECT_DOUBLE_EQ(r.first_token_s, 0.75);
  EXPECT_EQ(r.chunk_s, (std::vector<double>{0.75, 1.0}));
  EXPECT_EQ(r.stream_tokens, 2);
  EXPECT_EQ(r.finish_reason, 1);  // LENGTH
  EXPECT_TRUE(r.got_usage);
  EXPECT_EQ(r.prompt_tokens, 12);
  EXPECT_EQ(r.completion_tokens, 2);
  EXPECT_EQ(r.cached_prompt_tokens, 8);
}

TEST(OpenAiProtocolTest, CompletionsChunksAndBadChunks) {
  RequestRecord r;
  bool done = false;
  int added = 0;
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[{"index":0,"text":" a","finish_reason":null}],"usage":null})",
                               OpenAiEndpoint::kCompletions, 0.1, &r, &done, &added).ok());
  EXPECT_EQ(r.stream_tokens, 1);
  EXPECT_FALSE(r.got_usage);
  // A wrong type where a count belongs is read as 0, never thrown.
  ASSERT_TRUE(ApplyOpenAiEvent(R"({"choices":[],"usage":{"prompt_tokens":"x","completion_tokens":3}})",
                               OpenAiEndpoint::kCompletions, 0.2, &r, &done, &added).ok());
  EXPECT_EQ(r.prompt_tokens, 0);
  EXPECT_EQ(r.completion_tokens, 3);
  absl::Status s = ApplyOpenAiEvent("{not json", OpenAiEndpoint::kCompletions, 0.3, &r, &done, &added);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a JSON object"), std::string::npos) << s;
  s = ApplyOpenAiEvent(R"({"error":{"message":"worker lost","type":"ServiceUnavailable","code":503}})",
                       OpenAiEndpoint::kCompletions, 0.4, &r, &done, &added);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("worker lost (type ServiceUnavailable, code 503)"), std::string::npos) << s;
}

TEST(OpenAiProtocolTest, ErrorBodiesAndModels) {
  EXPECT_EQ(DescribeOpenAiError(429, R"({"error":{"message":"queue full","type":"rate_limit_exceeded",
                                   "param":null,"code":"queue_full"}})"),
            "HTTP 429: queue full (type rate_limit_exceeded, code queue_full)");
  EXPECT_EQ(DescribeOpenAiError(502, "<html>bad gateway</html>"), "HTTP 502: <html>bad gateway</html>");
  auto models = ParseOpenAiModels(R"({"object":"list","data":[{"id":"a","max_model_len":4096},{"id":"b"}]})");
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 2u);
  EXPECT_EQ((*models)[0].id, "a");
  EXPECT_EQ((*models)[0].max_model_len, 4096);
  EXPECT_EQ((*models)[1].max_model_len, 0);
  EXPECT_FALSE(ParseOpenAiModels("[]").ok());
  EXPECT_FALSE(ParseOpenAiEndpoint("embeddings").ok());
}

}  // namespace
}  // namespace tpserve::bench
