// `tpserve tokenize`: token ids of a text, from a model directory's tokenizer (no server needed).
#include <cstdio>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/shared_flags.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "directory holding tokenizer.model (+ tokenizer_config.json); --model DIR works too");
ABSL_FLAG(std::string, text, "", "text to encode");
ABSL_FLAG(bool, no_bos, false, "do not prepend BOS");


namespace tpserve::cli {

int TokenizeCommand() {
  std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) dir = absl::GetFlag(FLAGS_tokenizer);
  if (dir.empty()) {
    std::fprintf(stderr, "tpserve tokenize: --model DIR is required (a directory with tokenizer.model)\n");
    return 2;
  }
  auto tok = coordinator::Tokenizer::Load(dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "tpserve tokenize: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const std::string text = absl::GetFlag(FLAGS_text);
  if (!coordinator::IsValidUtf8(text)) {
    std::fprintf(stderr, "tpserve tokenize: --text is not valid UTF-8\n");
    return 2;
  }
  std::vector<int32_t> ids = (*tok)->Encode(text, !absl::GetFlag(FLAGS_no_bos));
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j;
    j["ids"] = ids;
    std::printf("%s\n", j.dump().c_str());
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace tpserve::cli
