// The built-in grounded workload (`tpserve-bench --dataset grounded`): chat requests whose answers copy spans
// of a long input, the backend work prompt-lookup speculation (--speculative-method ngram) is for. Three kinds,
// in turn:
//   extraction: a document and "copy every sentence that contains the word W, one per line";
//   repetition: a passage and "repeat it exactly";
//   code edit:  a generated C function and "rename identifier A to B, return the whole function".
// Documents are cut from real text (corpus_dir/*.txt, as synthetic prompts are); code comes from templates.
// Each row carries the expected answer's length as "output_len" (its tokens plus a few), so a real model that
// does the task generates about that much. A random-weight model does not copy anything: this workload is for
// users who serve a real model (docs/BENCHMARKS.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {

class PromptTokenizer;

struct GroundedOptions {
  std::string corpus_dir;  // *.txt documents are cut from
  int input_len = 1024;    // about this many tokens of document / passage / code per request
  int max_context = 0;     // > 0: input + answer stay within it
  uint64_t seed = 0;
};

// `count` rows in the dataset's JSONL shape: {"messages": [{"role": "user", "content": ...}], "output_len": N,
// "kind": "extraction" | "repetition" | "code_edit", "answer": the exact expected text}. `tokenizer` (may be
// null: lengths are then estimated at 4 characters a token) measures the inputs and answers.
// INVALID_ARGUMENT when the corpus has no usable text.
absl::StatusOr<std::vector<nlohmann::json>> GroundedRows(const GroundedOptions& options, int count,
                                                          PromptTokenizer* tokenizer);

}  // namespace tpserve::bench
