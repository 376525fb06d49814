// End to end through real processes: `tpserve serve --tp N` on 127.0.0.1 and the gRPC client produce exactly
// the greedy token ids of ../shared/reference (llama2.c / NumPy HF forward), from safetensors and from the
// PyTorch zip layout, at TP = 1, 2 and 4.
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

struct Case {
  std::string model;      // under ../shared/models
  std::string reference;  // under ../shared/reference
  int tp;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << " tp" << c.tp; }

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  std::string m = info.param.model;
  for (char& c : m) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return m + "_tp" + std::to_string(info.param.tp);
}

class ServeReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ServeReferenceTest, GreedyIdsEqualReference) {
  const Case& c = GetParam();
  TP_REQUIRE_SHARED(model_dir, "models/" + c.model);
  TP_REQUIRE_SHARED(ref_path, "reference/" + c.reference);
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));

  ServerProcess server({model_dir, c.tp, {"--max_num_seqs=8"}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  for (const auto& rc : ref["cases"]) {
    std::vector<int32_t> want_prompt = rc["prompt_ids"];
    std::vector<int32_t> want = rc["generated_ids"];
    v1::GenerateRequest req;
    req.set_prompt(rc["prompt"].get<std::string>());
    req.mutable_sampling()->set_temperature(0);
    req.mutable_stopping()->set_max_new_tokens(static_cast<int>(want.size()));
    req.mutable_stopping()->set_ignore_eos(true);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::GenerateResponse resp;
    grpc::Status s = stub->Generate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << server.ReadLog();
    EXPECT_EQ(std::vector<int32_t>(resp.prompt_token_ids().begin(), resp.prompt_token_ids().end()), want_prompt);
    std::vector<int32_t> got(resp.token_ids().begin(), resp.token_ids().end());
    EXPECT_EQ(got, want) << "prompt '" << rc["prompt"].get<std::string>() << "' at tp " << c.tp;
    EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(resp.usage().completion_tokens(), static_cast<int>(want.size()));
  }
  EXPECT_EQ(server.Stop(), 0) << server.ReadLog();
}

INSTANTIATE_TEST_SUITE_P(Shared, ServeReferenceTest,
                         ::testing::Values(Case{"stories260K", "stories260K.json", 1},
                                           Case{"stories260K", "stories260K.json", 2},
                                           Case{"stories260K", "stories260K.json", 4},
                                           Case{"stories260K-pt", "stories260K.json", 1},
                                           Case{"stories260K-pt", "stories260K.json", 2},
                                           Case{"stories260K-pt", "stories260K.json", 4},
                                           Case{"stories260K-pt-bf16", "stories260K-bf16.json", 1},
                                           Case{"stories260K-pt-bf16", "stories260K-bf16.json", 2}),
                         Name);

// The command-line client: `tpserve generate --json` prints the Foundation format.
TEST(GenerateCliTest, JsonOutputMatchesReference) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  TP_REQUIRE_SHARED(ref_path, "reference/stories260K.json");
  nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(ref_path));
  const auto& rc = ref["cases"][0];
  std::vector<int32_t> want = rc["generated_ids"];
  want.resize(40);
  ServerProcess server({model_dir, 1, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  std::string cmd = BinDir() + "/tpserve generate --server " + server.address() + " --prompt '" +
                    rc["prompt"].get<std::string>() + "' --max_new_tokens 40 --temperature 0 --ignore_eos --json";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  for (const char* key : {"text", "token_ids", "prompt_token_ids", "finish_reason"}) {
    EXPECT_TRUE(j.contains(key)) << key << " missing in " << out;
  }
  EXPECT_EQ(j["token_ids"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(j["prompt_token_ids"].get<std::vector<int32_t>>(), rc["prompt_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_FALSE(j["text"].get<std::string>().empty());
}

// --tp 3 on 8 heads is refused at startup with a message naming heads.
TEST(ServeStartupTest, BadSplitIsRefusedNamingHeads) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 3, {}, absl::Seconds(60)});
  absl::Status s = server.Start();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(server.ReadLog().find("num_attention_heads 8 is not divisible by --tp 3"), std::string::npos)
      << server.ReadLog();
  EXPECT_EQ(server.PollExit(), 1);
}

}  // namespace
}  // namespace tpserve::testing
