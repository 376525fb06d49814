// Limits of the sampling contract that the coordinator validates against (coordinator/validation.h) and the
// worker's sampler relies on (worker/sampler/sampler.h): one value for both sides, so they cannot disagree.
#pragma once

namespace tpserve {

// Most top-N logprobs a request may ask for per token (OpenAI's top_logprobs cap is 20 as well).
inline constexpr int kMaxLogprobs = 20;

}  // namespace tpserve
