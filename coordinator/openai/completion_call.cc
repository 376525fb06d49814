// Implementation of coordinator/openai/completion_call.h.
#include "coordinator/openai/completion_call.h"

#include "absl/strings/str_cat.h"
#include "coordinator/openai/openai_error.h"
#include "coordinator/openai/openai_format.h"

namespace tpserve::coordinator::openai {

namespace v1 = tpserve::v1;
using json = nlohmann::json;

// The engine's sink for one choice. Holds the call alive until the engine is done with the sequence.
class CompletionCall::ChoiceSink final : public RequestSink {
 public:
  ChoiceSink(std::shared_ptr<CompletionCall> call, int index) : call_(std::move(call)), index_(index) {}
  void OnDelta(const v1::GenerateStreamResponse& d) override { call_->OnDelta(index_, d); }
  // The OpenAI API answers an error with an error object, not a partial choice: `last` is dropped.
  void OnError(const absl::Status& s, const v1::GenerateStreamResponse* /*last*/) override {
    call_->OnError(index_, s);
  }

 private:
  std::shared_ptr<CompletionCall> call_;
  int index_;
};

CompletionCall::CompletionCall(CallOptions options, const Tokenizer* tokenizer, Engine* engine,
                               std::shared_ptr<http::Exchange> exchange)
    : options_(std::move(options)), tokenizer_(tokenizer), engine_(engine), exchange_(std::move(exchange)) {}

absl::Status CompletionCall::Start(RequestSpec spec) {
  absl::MutexLock lock(&mu_);
  spec_ = std::move(spec);
  choices_.resize(options_.n);
  for (Choice& c : choices_) {
    c.logprobs = options_.endpoint == Endpoint::kChat ? json::array() : EmptyCompletionLogprobs();
  }
  if (absl::Status s = SubmitLocked(0); !s.ok()) {
    done_ = true;
    return s;
  }
  std::weak_ptr<CompletionCall> weak = weak_from_this();
  exchange_->OnClientGone([weak] {
    if (auto call = weak.lock()) call->OnClientGone();
  });
  if (options_.stream) {
    exchange_->StartStream(http::Response{
        200, "text/event-stream; charset=utf-8", "", {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}}});
  }
  return absl::OkStatus();
}

absl::Status CompletionCall::SubmitLocked(int index) {
  RequestSpec s = spec_;
  if (index > 0) {
    s.sampling.set_seed(spec_.sampling.seed() + static_cast<uint64_t>(index));
    s.request_id = absl::StrCat(spec_.request_id, "-", index);
  }
  auto handle = engine_->Submit(std::move(s), std::make_shared<ChoiceSink>(shared_from_this(), index));
  if (!handle.ok()) return handle.status();
  choices_[index].handle = *handle;
  choices_[index].submitted = true;
  return absl::OkStatus();
}

void CompletionCall::CancelAllLocked() {
  for (const Choice& c : choices_) {
    if (c.submitted && !c.finished) engine_->Cancel(c.handle);
  }
}

void CompletionCall::OnClientGone() {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  done_ = true;
  CancelAllLocked();
}

void CompletionCall::OnError(int index, const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  Choice& c = choices_[index];
  if (c.finished) return;
  c.finished = true;
  ++num_finished_;
  if (!done_) FailLocked(status);
}

void CompletionCall::FailLocked(const absl::Status& status) {
  done_ = true;
  CancelAllLocked();
  const ApiError e = FromStatus(status);
  if (options_.stream) {
    exchange_->Write(absl::StrCat("data: ", ErrorJson(e), "\n\n"));
    exchange_->Write("data: [DONE]\n\n");
    exchange_->EndStream();
  } else {
    exchange_->Reply(ErrorResponse(e));
  }
}

void CompletionCall::OnDelta(int index, const v1::GenerateStreamResponse& d) {
  absl::MutexLock lock(&mu_);
  Choice& c = choices_[index];
  if (c.finished) return;
  const bool first = !c.started;
  c.started = true;
  if (index == 0 && first && !done_) {
    // Choice 0's prompt is prefilled and its full blocks cached: the other choices start from them.
    for (int i = 1; i < options_.n; ++i) {
      if (absl::Status s = SubmitLocked(i); !s.ok()) {
        FailLocked(s);
        break;
      }
    }
  }
  if (d.finish_reason() == v1::FINISH_REASON_CANCELLED) {
    c.finished = true;
    ++num_finished_;
    if (!done_) FailLocked(absl::UnavailableError("request cancelled: the server is shutting down; retry"));
    return;
  }
  if (!options_.stream) {
    c.text += d.text_delta();
    if (options_.logprobs) {
      if (options_.endpoint == Endpoint::kChat) {
        AppendChatLogprobs(d.logprobs(), options_.top_logprobs, *tokenizer_, &c.logprobs);
      } else {
        AppendCompletionLogprobs(d.logprobs(), options_.top_logprobs, *tokenizer_, &c.logprobs, &c.text_offset);
      }
    }
  }
  if (d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    c.finished = true;
    c.finish = d.finish_reason();
    c.usage = d.usage();
    ++num_finished_;
  }
  if (done_) return;
  if (options_.stream) StreamDeltaLocked(index, d);
  if (num_finished_ == options_.n) FinishLocked();
}

json CompletionCall::Envelope(bool chunk) const {
  const bool chat = options_.endpoint == Endpoint::kChat;
  return {{"id", options_.id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", options_.created},
          {"model", options_.model}};
}

json CompletionCall::UsageLocked() const {
  // The prompt is counted once, as OpenAI does for n > 1; cached_tokens is what choice 0 found in the prefix
  // cache (the other choices read choice 0's blocks: tpserve:prefix_cache_hits_total counts those).
  // Speculative counts are the sums over the choices, like completion_tokens.
  int completion = 0;
  v1::SpeculativeUsage speculative;
  for (const Choice& c : choices_) {
    completion += c.usage.completion_tokens();
    const v1::SpeculativeUsage& s = c.usage.speculative();
    speculative.set_num_drafts(speculative.num_drafts() + s.num_drafts());
    speculative.set_num_draft_tokens(speculative.num_draft_tokens() + s.num_draft_tokens());
    speculative.set_num_accepted_tokens(speculative.num_accepted_tokens() + s.num_accepted_tokens());
  }
  return UsageJson(choices_[0].usage.prompt_tokens(), completion, choices_[0].usage.cached_prompt_tokens(),
                   speculative);
}

void CompletionCall::SendEvent(const json& j) { exchange_->Write(absl::StrCat("data: ", Dump(j), "\n\n")); }

void CompletionCall::StreamDeltaLocked(int index, const v1::GenerateStreamResponse& d) {
  const Choice& c = choices_[index];
  const bool has_text = !d.text_delta().empty();
  const bool has_logprobs = options_.logprobs && d.logprobs_size() > 0;
  const bool finishing = d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  json choice = {{"index", index}};
  json logprobs = nullptr;
  int offset = 0;
  if (options_.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (!c.role_sent) delta["role"] = "assistant";
    if (has_text || !c.role_sent) delta["content"] = d.text_delta();
    if (!has_text && c.role_sent && !has_logprobs && !finishing) return;  // nothing new to say
    choices_[index].role_sent = true;
    if (has_logprobs) {
      json content = json::array();
      AppendChatLogprobs(d.logprobs(), options_.top_logprobs, *tokenizer_, &content);
      logprobs = {{"content", content}};
    }
    choice["delta"] = delta;
  } else {
    if (!has_text && !has_logprobs && !finishing) return;
    if (has_logprobs) {
      logprobs = EmptyCompletionLogprobs();
      offset = choices_[index].text_offset;
      AppendCompletionLogprobs(d.logprobs(), options_.top_logprobs, *tokenizer_, &logprobs, &offset);
      choices_[index].text_offset = offset;
    }
    choice["text"] = d.text_delta();
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = FinishReasonJson(d.finish_reason());
  json j = Envelope(true);
  j["choices"] = json::array({choice});
  if (options_.include_usage) j["usage"] = nullptr;
  SendEvent(j);
}

void CompletionCall::FinishLocked() {
  done_ = true;
  if (options_.stream) {
    if (options_.include_usage) {
      json j = Envelope(true);
      j["choices"] = json::array();
      j["usage"] = UsageLocked();
      SendEvent(j);
    }
    exchange_->Write("data: [DONE]\n\n");
    exchange_->EndStream();
    return;
  }
  json out = Envelope(false);
  json list = json::array();
  for (int i = 0; i < options_.n; ++i) {
    const Choice& c = choices_[i];
    json choice = {{"index", i}};
    if (options_.endpoint == Endpoint::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = options_.logprobs ? json{{"content", c.logprobs}} : json(nullptr);
    } else {
      choice["text"] = c.text;
      choice["logprobs"] = options_.logprobs ? c.logprobs : json(nullptr);
    }
    choice["finish_reason"] = FinishReasonJson(c.finish);
    list.push_back(std::move(choice));
  }
  out["choices"] = std::move(list);
  out["usage"] = UsageLocked();
  exchange_->Reply(http::Response{200, "application/json", Dump(out), {}});
}

}  // namespace tpserve::coordinator::openai
