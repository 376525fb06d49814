// Implementation of coordinator/request_state.h.
#include "coordinator/request_state.h"

#include <algorithm>

namespace tpserve::coordinator {

namespace v1 = tpserve::v1;

const char* FinishReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_EOS: return "eos";
    case v1::FINISH_REASON_STOP_SEQUENCE: return "stop";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_CANCELLED: return "abort";
    case v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

RequestState::RequestState(uint64_t seq_id, RequestSpec spec, std::shared_ptr<RequestSink> sink,
                           const Tokenizer& tokenizer)
    : first_scheduled(absl::InfinitePast()),
      first_token(absl::InfinitePast()),
      last_token(absl::InfinitePast()),
      seq_id_(seq_id),
      spec_(std::move(spec)),
      sink_(std::move(sink)),
      tokenizer_(tokenizer),
      detok_(tokenizer, spec_.prompt_ids) {}

bool RequestState::ReleaseText(std::string* out) {
  if (spec_.stop.empty()) {
    out->append(pending_);
    pending_.clear();
    return false;
  }
  // Earliest complete match of any stop string.
  size_t best = std::string::npos;
  for (const auto& s : spec_.stop) {
    size_t p = pending_.find(s);
    if (p != std::string::npos && p < best) best = p;
  }
  if (best != std::string::npos) {
    out->append(pending_, 0, best);
    pending_.clear();
    return true;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : spec_.stop) {
    size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  out->append(pending_, 0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return false;
}

void RequestState::FillUsage(v1::GenerateStreamResponse* delta) const {
  auto* u = delta->mutable_usage();
  u->set_prompt_tokens(static_cast<int>(spec_.prompt_ids.size()));
  u->set_completion_tokens(num_generated());
  u->set_cached_prompt_tokens(cached_prompt_tokens);
  if (speculative.num_drafts() > 0) *u->mutable_speculative() = speculative;
}

v1::FinishReason RequestState::OnToken(const tpserve::worker::v1::SampledToken& token,
                                       v1::GenerateStreamResponse* delta) {
  delta->set_request_id(spec_.request_id);
  if (finished_) return v1::FINISH_REASON_UNSPECIFIED;
  const int32_t id = token.token_id();
  ++num_generated_;
  delta->add_token_ids(id);
  if (spec_.logprobs > 0) {
    auto* lp = delta->add_logprobs();
    lp->set_token_id(id);
    lp->set_logprob(token.logprob());
    for (int i = 0; i < token.top_ids_size() && i < token.top_logprobs_size(); ++i) {
      auto* t = lp->add_top();
      t->set_token_id(token.top_ids(i));
      t->set_token(tokenizer_.IdToPiece(token.top_ids(i)));
      t->set_logprob(token.top_logprobs(i));
    }
  }

  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  bool is_eos = id == tokenizer_.eos_id() && !spec_.ignore_eos;
  bool is_stop_token =
      std::find(spec_.stop_token_ids.begin(), spec_.stop_token_ids.end(), id) != spec_.stop_token_ids.end();
  std::string text;
  if (is_eos) {
    reason = v1::FINISH_REASON_EOS;
  } else if (is_stop_token) {
    reason = v1::FINISH_REASON_STOP_TOKEN;
  } else {
    pending_ += detok_.Add(id);
    if (ReleaseText(&text)) reason = v1::FINISH_REASON_STOP_SEQUENCE;
  }
  if (reason == v1::FINISH_REASON_UNSPECIFIED &&
      num_generated() >= spec_.max_new_tokens) {
    reason = v1::FINISH_REASON_LENGTH;
  }
  if (reason != v1::FINISH_REASON_UNSPECIFIED && reason != v1::FINISH_REASON_STOP_SEQUENCE) {
    // Nothing more comes: release what was held back for a stop string that never completed.
    pending_ += detok_.Flush();
    text += pending_;
    pending_.clear();
  }
  delta->set_text_delta(text);
  if (reason != v1::FINISH_REASON_UNSPECIFIED) {
    finished_ = true;
    delta->set_finish_reason(reason);
    FillUsage(delta);
  }
  return reason;
}

void RequestState::Finish(v1::FinishReason reason, v1::GenerateStreamResponse* delta) {
  delta->set_request_id(spec_.request_id);
  if (reason == v1::FINISH_REASON_ERROR && !finished_) {
    pending_ += detok_.Flush();
    delta->mutable_text_delta()->append(pending_);
    pending_.clear();
  }
  finished_ = true;
  delta->set_finish_reason(reason);
  FillUsage(delta);
}

}  // namespace tpserve::coordinator
