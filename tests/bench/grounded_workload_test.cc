// tpserve-bench --dataset grounded: every request's expected answer is copied from its own input (the point of
// the workload), the three kinds take turns, and inputs are sized to --input-len and to the model's context.
#include "bench/loadgen/grounded_workload.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "bench/loadgen/workload.h"
#include "gtest/gtest.h"
#include "tests/util/test_env.h"

namespace tpserve::bench {
namespace {

using json = nlohmann::json;

std::string Corpus() { return tpserve::testing::SourceDir() + "/data/tokenizer-corpus"; }

std::string Prompt(const json& row) { return row["messages"][0]["content"].get<std::string>(); }

TEST(GroundedWorkloadTest, AnswersCopySpansOfTheirInput) {
  auto rows = GroundedRows({Corpus(), /*input_len=*/400, /*max_context=*/0, /*seed=*/3}, 9, nullptr);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 9u);
  const std::vector<std::string> kinds = {"extraction", "repetition", "code_edit"};
  for (size_t i = 0; i < rows->size(); ++i) {
    const json& r = (*rows)[i];
    const std::string prompt = Prompt(r), answer = r["answer"].get<std::string>();
    EXPECT_EQ(r["kind"], kinds[i % 3]) << i;
    ASSERT_FALSE(answer.empty()) << i;
    // Without a tokenizer lengths are estimated at 4 characters a token.
    EXPECT_GE(r["output_len"].get<int>(), static_cast<int>(answer.size()) / 4) << i;
    EXPECT_GT(prompt.size(), 400u * 4 / 2) << i << ": the input should be about --input-len tokens";
    EXPECT_LT(prompt.size(), (400u + 96) * 4 * 2) << i;
    if (kinds[i % 3] == "extraction") {
      for (absl::string_view line : absl::StrSplit(answer, '\n')) {
        EXPECT_TRUE(absl::StrContains(prompt, line)) << i << ": not a sentence of the document: " << line;
      }
    } else if (kinds[i % 3] == "repetition") {
      EXPECT_TRUE(absl::StrContains(prompt, answer)) << i;
    } else {
      // The answer is the prompt's function with the identifier renamed: undo the rename and find it.
      const size_t a = prompt.find('`') + 1, b = prompt.find('`', a);
      const std::string from = prompt.substr(a, b - a);
      ASSERT_FALSE(from.empty()) << prompt;
      const std::string undone = absl::StrReplaceAll(answer, {{from + "_v2", from}});
      EXPECT_TRUE(absl::StrContains(prompt, undone.substr(5, undone.size() - 8))) << i << ": " << answer;
      EXPECT_TRUE(absl::StrContains(answer, from + "_v2")) << i;
    }
  }
  // Seeded: the same rows again.
  auto again = GroundedRows({Corpus(), 400, 0, 3}, 9, nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *rows);
}

TEST(GroundedWorkloadTest, FitsTheContextAndRefusesWhatCannot) {
  // A 512-token model: input and answer together stay within it.
  auto rows = GroundedRows({Corpus(), 2048, /*max_context=*/512, 1}, 6, nullptr);
  ASSERT_TRUE(rows.ok()) << rows.status();
  for (const json& r : *rows) {
    EXPECT_LE(static_cast<int>(Prompt(r).size()) / 4 + r["output_len"].get<int>(), 512 + 96) << r["kind"];
  }
  EXPECT_EQ(GroundedRows({Corpus(), 2048, 100, 1}, 1, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GroundedRows({"/nonexistent", 256, 0, 1}, 1, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Through BuildWorkload, as tpserve-bench --dataset grounded uses it: chat requests with the rows' lengths.
TEST(GroundedWorkloadTest, BuildWorkloadServesTheBuiltInDataset) {
  WorkloadOptions o;
  o.dataset = kGroundedDataset;
  o.corpus_dir = Corpus();
  o.input.mean = 300;
  auto reqs = BuildWorkload(o, 4, nullptr);
  ASSERT_TRUE(reqs.ok()) << reqs.status();
  ASSERT_EQ(reqs->size(), 4u);
  for (const RequestSpec& r : *reqs) {
    EXPECT_EQ(r.request.chat().messages_size(), 1);
    EXPECT_GT(r.output_len, 8);
    EXPECT_EQ(r.request.stopping().max_new_tokens(), r.output_len);
  }
}

}  // namespace
}  // namespace tpserve::bench
