// Limits of the sampling contract that the coordinator validates against (coordinator/validation.h) and the
// worker's sampler relies on (worker/sampler/sampler.h): one value for both sides, so they cannot disagree.
#pragma once

namespace tpserve {

// Most top-N logprobs a request may ask for per token (OpenAI's top_logprobs cap is 20 as well).
inline constexpr int kMaxLogprobs = 20;

// Most tokens proposed per sequence and step (upper bound of --num-speculative-tokens): the scheduler caps its
// proposals with it and the worker refuses a step that asks its draft model for more.
inline constexpr int kMaxSpeculativeTokens = 16;

}  // namespace tpserve
