// Implementation of coordinator/metrics.h. Bucket boundaries follow vLLM's.
#include "coordinator/metrics.h"

#include <algorithm>
#include <cctype>

namespace tpserve::coordinator {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                                  0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
                                                  640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                                 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kLatencyBuckets = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                                     30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
                                                     1920.0, 7680.0};
const Histogram::BucketBoundaries kTokenBuckets = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};
const Histogram::BucketBoundaries kAcceptanceLengthBuckets = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 17};
const Histogram::BucketBoundaries kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5, 1.0, 2.5, 5.0, 10.0};

}  // namespace

Metrics::Metrics(const std::string& model_name, int world_size)
    : registry_(std::make_shared<prometheus::Registry>()), model_name_(model_name) {
  const prometheus::Labels labels = {{"model_name", model_name}};
  auto gauge = [&](const char* name, const char* help) {
    return &BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
  };
  auto counter = [&](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
  };
  auto histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
    return &BuildHistogram().Name(name).Help(help).Register(*registry_).Add(labels, b);
  };
  num_requests_running = gauge("tpserve:num_requests_running", "Number of requests in model execution batches.");
  num_requests_waiting = gauge("tpserve:num_requests_waiting", "Number of requests waiting to be processed.");
  kv_cache_usage_perc = gauge("tpserve:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
  prompt_tokens_total = counter("tpserve:prompt_tokens_total", "Number of prefill tokens processed.");
  generation_tokens_total = counter("tpserve:generation_tokens_total", "Number of generation tokens processed.");
  num_preemptions_total = counter("tpserve:num_preemptions_total", "Cumulative number of preemptions.");
  prefix_cache_queries_total =
      counter("tpserve:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.");
  prefix_cache_hits_total =
      counter("tpserve:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.");
  request_failure_total = counter("tpserve:request_failure_total", "Requests that ended with an error status.");
  time_to_first_token_seconds =
      histogram("tpserve:time_to_first_token_seconds", "Histogram of time to first token in seconds.", kTtftBuckets);
  inter_token_latency_seconds =
      histogram("tpserve:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", kItlBuckets);
  e2e_request_latency_seconds = histogram("tpserve:e2e_request_latency_seconds",
                                          "Histogram of end to end request latency in seconds.", kLatencyBuckets);
  request_queue_time_seconds = histogram("tpserve:request_queue_time_seconds",
                                         "Histogram of time spent in WAITING phase for request.", kLatencyBuckets);
  request_prefill_time_seconds = histogram("tpserve:request_prefill_time_seconds",
                                           "Histogram of time spent in PREFILL phase for request.", kLatencyBuckets);
  request_decode_time_seconds = histogram("tpserve:request_decode_time_seconds",
                                          "Histogram of time spent in DECODE phase for request.", kLatencyBuckets);
  request_prompt_tokens =
      histogram("tpserve:request_prompt_tokens", "Number of prefill tokens processed.", kTokenBuckets);
  request_generation_tokens =
      histogram("tpserve:request_generation_tokens", "Number of generation tokens processed.", kTokenBuckets);
  iteration_tokens_total =
      histogram("tpserve:iteration_tokens_total", "Histogram of number of tokens per engine_step.", kTokenBuckets);
  spec_decode_num_drafts_total =
      counter("tpserve:spec_decode_num_drafts_total", "Verify steps of a sequence that carried proposals.");
  spec_decode_num_draft_tokens_total =
      counter("tpserve:spec_decode_num_draft_tokens_total", "Proposed (draft) tokens sent for verification.");
  spec_decode_num_accepted_tokens_total =
      counter("tpserve:spec_decode_num_accepted_tokens_total", "Proposed tokens the model accepted.");
  spec_decode_acceptance_length = histogram(
      "tpserve:spec_decode_acceptance_length",
      "Tokens a sequence gained in one verify step: accepted proposals + the model's own next token.",
      kAcceptanceLengthBuckets);
  request_success_family_ = &BuildCounter()
                                 .Name("tpserve:request_success_total")
                                 .Help("Count of successfully processed requests.")
                                 .Register(*registry_);
  cache_config_family_ =
      &BuildGauge().Name("tpserve:cache_config_info").Help("Information of the KV cache config.").Register(*registry_);
  worker_auth_refused_family_ = &BuildCounter()
                                     .Name("tpserve:worker_auth_refused_total")
                                     .Help("Worker-plane peers or calls refused by worker authentication, by reason.")
                                     .Register(*registry_);
  worker_plane_family_ = &BuildGauge()
                              .Name("tpserve:worker_plane_info")
                              .Help("How the worker plane admits workers: auth mode, bind scope, insecure override.")
                              .Register(*registry_);
  weight_format_family_ = &BuildGauge()
                               .Name("tpserve:weight_format_info")
                               .Help("How the layer projections are stored: the dtype, or int8 (--quantization).")
                               .Register(*registry_);
  auto& up = BuildGauge().Name("tpserve:worker_up").Help("1 when the worker rank is connected and loaded.").Register(*registry_);
  auto& step = BuildHistogram()
                   .Name("tpserve:worker_step_time_seconds")
                   .Help("Forward-step time per worker rank, in seconds.")
                   .Register(*registry_);
  auto& ar = BuildHistogram()
                 .Name("tpserve:worker_allreduce_time_seconds")
                 .Help("Time per step spent in collectives (all-reduce, all-gather) per worker rank, in seconds.")
                 .Register(*registry_);
  for (int r = 0; r < world_size; ++r) {
    prometheus::Labels l = {{"model_name", model_name}, {"rank", std::to_string(r)}};
    worker_up_.push_back(&up.Add(l));
    worker_step_.push_back(&step.Add(l, kStepBuckets));
    worker_allreduce_.push_back(&ar.Add(l, kStepBuckets));
  }
}

void Metrics::SetCacheConfig(int block_size, int num_blocks) {
  cache_config_family_
      ->Add({{"block_size", std::to_string(block_size)}, {"num_blocks", std::to_string(num_blocks)}})
      .Set(1);
}

void Metrics::SetWeightFormat(const std::string& weight_format, const std::string& dtype) {
  weight_format_family_->Add({{"model_name", model_name_}, {"weight_format", weight_format}, {"dtype", dtype}}).Set(1);
}

prometheus::Counter& Metrics::WorkerAuthRefused(const std::string& reason) {
  return worker_auth_refused_family_->Add({{"model_name", model_name_}, {"reason", reason}});
}

void Metrics::SetWorkerPlane(const std::string& auth, const std::string& bind, bool insecure) {
  worker_plane_family_
      ->Add({{"model_name", model_name_}, {"auth", auth}, {"bind", bind}, {"insecure", insecure ? "true" : "false"}})
      .Set(1);
}

prometheus::Counter& Metrics::RequestSuccess(const std::string& finished_reason) {
  return request_success_family_->Add({{"model_name", model_name_}, {"finished_reason", finished_reason}});
}

}  // namespace tpserve::coordinator
