// Implementation of coordinator/api_service.h.
#include "coordinator/api_service.h"

#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/tsan_annotations.h"
#include "coordinator/api_key.h"
#include "coordinator/status_details.h"
#include "coordinator/tokenizer/utf8.h"

namespace tpserve::coordinator {

namespace v1 = tpserve::v1;

namespace {

// Remembers a cancel that arrives before the engine handle exists.
class CancelLatch {
 public:
  void SetHandle(Engine* engine, uint64_t handle) {
    absl::MutexLock lock(&mu_);
    engine_ = engine;
    handle_ = handle;
    if (cancelled_) engine_->Cancel(handle_);
  }
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (engine_ != nullptr) engine_->Cancel(handle_);
  }

 private:
  absl::Mutex mu_;
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t handle_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// Unary Generate: accumulates deltas and finishes on the last one. The engine's sink reference is a
// non-owning shared_ptr: the reactor lives until Finish's OnDone, which happens only after the engine's
// final call.
class UnaryGenerateReactor final : public grpc::ServerUnaryReactor, public RequestSink {
 public:
  explicit UnaryGenerateReactor(v1::GenerateResponse* response) : response_(response) {}

  void OnDelta(const v1::GenerateStreamResponse& d) override {
    response_->set_request_id(d.request_id());
    if (d.prompt_token_ids_size() > 0) *response_->mutable_prompt_token_ids() = d.prompt_token_ids();
    response_->mutable_token_ids()->MergeFrom(d.token_ids());
    response_->mutable_text()->append(d.text_delta());
    response_->mutable_logprobs()->MergeFrom(d.logprobs());
    if (d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      response_->set_finish_reason(d.finish_reason());
      *response_->mutable_usage() = d.usage();
      if (d.finish_reason() == v1::FINISH_REASON_CANCELLED) {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled"));
      } else {
        Finish(grpc::Status::OK);
      }
    }
  }
  // A unary call's error carries no response message: what was generated is dropped with `last`.
  void OnError(const absl::Status& s, const v1::GenerateStreamResponse* /*last*/) override {
    Finish(ToGrpcStatus(s));
  }
  void OnCancel() override {
    TsanAcquire(static_cast<grpc::internal::ServerReactor*>(this));  // see common/tsan_annotations.h
    latch_.Cancel();
    TsanRelease(static_cast<grpc::internal::ServerReactor*>(this));
  }
  void OnDone() override {
    TsanAcquire(static_cast<grpc::internal::ServerReactor*>(this));
    delete this;
  }
  CancelLatch& latch() { return latch_; }

 private:
  v1::GenerateResponse* response_;
  CancelLatch latch_;
};

// GenerateStream: writes one message per engine step, in order, one write in flight at a time.
// Finish() is called only after mu_ is released: once it is called, OnDone may run on a gRPC thread and
// delete this, so nothing here may touch a member (mu_ included) afterwards. finishing_ makes exactly one
// path call it.
class StreamGenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse>, public RequestSink {
 public:
  void OnDelta(const v1::GenerateStreamResponse& d) override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      if (d.finish_reason() == v1::FINISH_REASON_CANCELLED) {
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
        done_ = true;
        queue_.clear();
      } else {
        queue_.push_back(d);
        if (d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) done_ = true;
      }
      finish = PumpLocked();
    }
    if (finish) Finish(final_status_);
  }
  // A server-side end: the last message (FINISH_REASON_ERROR, what was generated but not yet sent, usage)
  // goes out after everything queued, then the status.
  void OnError(const absl::Status& s, const v1::GenerateStreamResponse* last) override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      final_status_ = ToGrpcStatus(s);
      done_ = true;
      if (last != nullptr) queue_.push_back(*last);
      finish = PumpLocked();
    }
    if (finish) Finish(final_status_);
  }
  void OnWriteDone(bool ok) override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!queue_.empty()) queue_.pop_front();
      // Client gone: the cancel path (OnCancel) stops the request; drop what is queued.
      if (!ok) queue_.clear();
      finish = PumpLocked();
    }
    if (finish) Finish(final_status_);
  }
  void OnCancel() override {
    TsanAcquire(static_cast<grpc::internal::ServerReactor*>(this));  // see common/tsan_annotations.h
    latch_.Cancel();
    TsanRelease(static_cast<grpc::internal::ServerReactor*>(this));
  }
  void OnDone() override {
    TsanAcquire(static_cast<grpc::internal::ServerReactor*>(this));
    delete this;
  }
  CancelLatch& latch() { return latch_; }

 private:
  // Starts the next write, or returns true when the caller must Finish (after unlocking).
  bool PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_) return false;
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
      return false;
    }
    if (!done_) return false;
    finishing_ = true;
    return true;
  }

  absl::Mutex mu_;
  std::deque<v1::GenerateStreamResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  // Written under mu_ until finishing_ is set, read without it by the one caller of Finish.
  grpc::Status final_status_ = grpc::Status::OK;
  CancelLatch latch_;
};

template <typename Reactor>
std::shared_ptr<RequestSink> NonOwning(Reactor* r) {
  return std::shared_ptr<RequestSink>(static_cast<RequestSink*>(r), [](RequestSink*) {});
}

}  // namespace

GenerationService::GenerationService(const ApiServiceOptions& options, const Tokenizer* tokenizer)
    : options_(options), tokenizer_(tokenizer) {}

grpc::Status GenerationService::Authorize(grpc::CallbackServerContext* context) const {
  std::optional<std::string> header;
  const auto& md = context->client_metadata();
  if (auto it = md.find("authorization"); it != md.end()) header.emplace(it->second.data(), it->second.size());
  return ToGrpcStatus(CheckApiKey(header, options_.api_key, "send metadata 'authorization: Bearer <key>'"));
}

void GenerationService::SetEngine(Engine* engine, int kv_blocks, int kv_block_size) {
  kv_blocks_ = kv_blocks;
  kv_block_size_ = kv_block_size;
  engine_ = engine;
}

// Shared by Generate and GenerateStream: authorise, validate, submit; any failure finishes the reactor.
template <typename Reactor>
Reactor* GenerationService::StartGeneration(grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
                                            Reactor* reactor) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  Engine* engine = engine_.load();
  if (engine == nullptr) {
    reactor->Finish(ToGrpcStatus(WithReason(
        absl::UnavailableError("model is loading; retry when health reports SERVING"), reason::kLoading)));
    return reactor;
  }
  auto spec = ValidateGenerateRequest(request, *tokenizer_, options_.limits);
  if (!spec.ok()) {
    reactor->Finish(ToGrpcStatus(spec.status()));
    return reactor;
  }
  auto handle = engine->Submit(std::move(*spec), NonOwning(reactor));
  if (!handle.ok()) {
    reactor->Finish(ToGrpcStatus(handle.status()));
    return reactor;
  }
  reactor->latch().SetHandle(engine, *handle);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  return StartGeneration(context, *request, new UnaryGenerateReactor(response));
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return StartGeneration(context, *request, new StreamGenerateReactor());
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status auth = Authorize(context); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  std::vector<int32_t> ids;
  if (request->input_case() == v1::TokenizeRequest::INPUT_NOT_SET) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("input: set one of text or chat")));
    return reactor;
  }
  if (request->has_chat()) {
    auto r = EncodeChatInput(request->chat(), *tokenizer_);
    if (!r.ok()) {
      reactor->Finish(ToGrpcStatus(r.status()));
      return reactor;
    }
    ids = std::move(*r);
  } else {
    if (!IsValidUtf8(request->text())) {
      reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("text: is not valid UTF-8")));
      return reactor;
    }
    ids = tokenizer_->Encode(request->text(), request->add_bos());
  }
  for (int32_t id : ids) {
    response->add_ids(id);
    response->add_pieces(tokenizer_->IdToPiece(id));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::ModelInfo* response) {
  if (grpc::Status auth = Authorize(context); !auth.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(auth);
    return reactor;
  }
  const ModelConfig& c = options_.model_config;
  response->set_model_name(options_.model_name);
  response->set_architecture("LlamaForCausalLM");
  response->set_vocab_size(c.vocab_size);
  response->set_max_context_length(options_.limits.max_model_len);
  response->set_num_layers(c.num_layers);
  response->set_hidden_size(c.hidden_size);
  response->set_num_attention_heads(c.num_heads);
  response->set_num_key_value_heads(c.num_kv_heads);
  response->set_tensor_parallel_size(options_.tensor_parallel_size);
  response->set_dtype(options_.dtype);
  response->set_weight_format(options_.weight_format);
  response->set_bos_token_id(tokenizer_->bos_id());
  response->set_eos_token_id(tokenizer_->eos_id());
  response->set_kv_cache_blocks(kv_blocks_.load());
  response->set_kv_block_size(kv_block_size_.load());
  {
    absl::MutexLock lock(&device_mu_);
    response->set_device(device_);
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tpserve::coordinator
