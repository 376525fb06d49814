// ParseOpenAiRequest against hand-written OpenAI bodies: every field lands in the GenerateRequest the gRPC
// validator takes, type errors name the OpenAI parameter, and validator errors are renamed to it.
#include "coordinator/openai/openai_request.h"

#include "gtest/gtest.h"

namespace tpserve::coordinator::openai {
namespace {

TEST(OpenAiRequestTest, ChatFieldsMapOntoTheGenerateRequest) {
  auto r = ParseOpenAiRequest(R"({
    "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}],
    "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9, "n": 3, "stop": "END",
    "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": true, "top_logprobs": 4,
    "user": "u1", "top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": true,
    "stop_token_ids": [2, 5], "priority": -3, "no_speculation": true, "stream": true, "stream_options": {"include_usage": true}})",
                              Endpoint::kChat);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& g = r->generate;
  EXPECT_EQ(r->model, "m");
  ASSERT_EQ(g.chat().messages_size(), 2);
  EXPECT_EQ(g.chat().messages(1).content(), "Hi!");
  EXPECT_EQ(g.stopping().max_new_tokens(), 7);  // max_completion_tokens wins
  EXPECT_EQ(r->max_tokens_param, "max_completion_tokens");
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 0);
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_EQ(r->n, 3);
  ASSERT_EQ(g.stopping().stop_size(), 1);
  EXPECT_EQ(g.stopping().stop(0), "END");
  EXPECT_EQ(g.stopping().stop_token_ids_size(), 2);
  EXPECT_TRUE(g.stopping().ignore_eos());
  EXPECT_EQ(g.priority(), -3);
  EXPECT_TRUE(g.no_speculation());
  EXPECT_TRUE(r->logprobs);
  EXPECT_EQ(r->top_logprobs, 4);
  EXPECT_EQ(g.logprobs(), 4);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
}

TEST(OpenAiRequestTest, CompletionPromptForms) {
  auto text = ParseOpenAiRequest(R"({"prompt": ["Once"], "logprobs": 0})", Endpoint::kCompletions);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->generate.prompt(), "Once");
  EXPECT_FALSE(text->generate.no_speculation());  // speculation is opt-out: on unless the body says otherwise
  EXPECT_EQ(text->generate.stopping().max_new_tokens(), 0);  // unset: the service fills the default
  EXPECT_TRUE(text->logprobs);
  EXPECT_EQ(text->generate.logprobs(), 1);  // the sampled token's logprob needs one alternative
  auto ids = ParseOpenAiRequest(R"({"prompt": [[1, 2, 3]]})", Endpoint::kCompletions);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->generate.token_ids().ids_size(), 3);
}

TEST(OpenAiRequestTest, BadFieldsNameTheirParameter) {
  struct Case {
    const char* body;
    Endpoint endpoint;
    const char* param;
  };
  const Case cases[] = {
      {"{", Endpoint::kCompletions, "body"},
      {"3", Endpoint::kCompletions, "body"},
      {R"({"prompt": 3})", Endpoint::kCompletions, "prompt"},
      {R"({"prompt": ["a", "b"]})", Endpoint::kCompletions, "prompt"},
      {R"({})", Endpoint::kChat, "messages"},
      {R"({"messages": [{"role": "user", "content": 5}]})", Endpoint::kChat, "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", Endpoint::kChat, "messages[0].content[0]"},
      {R"({"messages": [], "top_logprobs": 2})", Endpoint::kChat, "top_logprobs"},
      {R"({"prompt": "a", "temperature": "hot"})", Endpoint::kCompletions, "temperature"},
      {R"({"prompt": "a", "max_tokens": 0})", Endpoint::kCompletions, "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 2.5})", Endpoint::kCompletions, "max_tokens"},
      {R"({"prompt": "a", "n": 17})", Endpoint::kCompletions, "n"},
      {R"({"prompt": "a", "stop": {"x": 1}})", Endpoint::kCompletions, "stop"},
      {R"({"prompt": "a", "stream_options": {"include_usage": true}})", Endpoint::kCompletions, "stream_options"},
      {R"({"prompt": "a", "tools": [{"type": "function"}]})", Endpoint::kCompletions, "tools"},
      {R"({"prompt": "a", "echo": true})", Endpoint::kCompletions, "echo"},
      {R"({"prompt": "a", "model": 7})", Endpoint::kCompletions, "model"},
      {R"({"prompt": "a", "no_speculation": "yes"})", Endpoint::kCompletions, "no_speculation"},
  };
  for (const auto& c : cases) {
    auto r = ParseOpenAiRequest(c.body, c.endpoint);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    OpenAiRequest bare;
    bare.endpoint = c.endpoint;
    EXPECT_EQ(ToOpenAiParam(r.status().message(), bare).param, c.param) << c.body << " -> " << r.status();
  }
}

TEST(OpenAiRequestTest, ValidatorFieldsAreRenamed) {
  OpenAiRequest chat;
  chat.endpoint = Endpoint::kChat;
  chat.max_tokens_param = "max_completion_tokens";
  EXPECT_EQ(ToOpenAiParam("sampling.top_p: must be in (0, 1] (got 0)", chat).param, "top_p");
  EXPECT_EQ(ToOpenAiParam("sampling.top_p: must be in (0, 1] (got 0)", chat).message, "top_p: must be in (0, 1] (got 0)");
  ParamError max = ToOpenAiParam("stopping.max_new_tokens: prompt (9 tokens) + max_new_tokens (600) exceeds", chat);
  EXPECT_EQ(max.param, "max_completion_tokens");
  EXPECT_EQ(max.message, "max_completion_tokens: prompt (9 tokens) + max_completion_tokens (600) exceeds");
  EXPECT_EQ(ToOpenAiParam("chat.messages[2].role: unknown role", chat).param, "messages[2].role");
  EXPECT_EQ(ToOpenAiParam("prompt: 900 tokens is longer than the limit", chat).param, "messages");
  EXPECT_EQ(ToOpenAiParam("logprobs: must be in [0, 20] (got 30)", chat).param, "top_logprobs");
  EXPECT_EQ(ToOpenAiParam("stopping.stop[1]: must not be empty", chat).param, "stop");
  OpenAiRequest completion;
  completion.endpoint = Endpoint::kCompletions;
  EXPECT_EQ(ToOpenAiParam("token_ids.ids[1]: id 999 is outside the vocabulary", completion).param, "prompt");
  EXPECT_EQ(ToOpenAiParam("request queue is full (2 waiting)", completion).param, "");
}

}  // namespace
}  // namespace tpserve::coordinator::openai
