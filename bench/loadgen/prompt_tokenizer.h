// What building a workload needs from the served model's tokenizer: token-exact synthetic prompts and the
// lengths of dataset prompts. Two sources: tpserve's own Tokenize RPC (gRPC API), and the model's tokenizer
// files read locally (OpenAI API, which has no tokenize endpoint; vllm bench serve's --tokenizer does the same).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "generation.grpc.pb.h"

namespace tpserve::bench {

class PromptTokenizer {
 public:
  virtual ~PromptTokenizer() = default;
  // req.text (BOS when req.add_bos) or req.chat (BOS + the chat; a local tokenizer only estimates it, see
  // local_prompt_tokenizer.h).
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(const v1::TokenizeRequest& req) = 0;
  virtual int bos_id() const = 0;
  // The model's context in tokens; 0 when unknown (then lengths are not checked here and the server judges).
  virtual int max_context() const = 0;
};

}  // namespace tpserve::bench
