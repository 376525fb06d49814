// Prometheus metrics with vLLM's semantics under the tpserve: prefix (docs/METRICS.md maps each to its vLLM
// and TGI equivalent). Thread-safe (prometheus-cpp metrics are atomic).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tpserve::coordinator {

class Metrics {
 public:
  Metrics(const std::string& model_name, int world_size);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void SetCacheConfig(int block_size, int num_blocks);
  prometheus::Counter& RequestSuccess(const std::string& finished_reason);  // lower-case reason
  prometheus::Gauge& WorkerUp(int rank) { return *worker_up_[rank]; }
  // tpserve:worker_auth_refused_total{reason}: worker-plane peers or calls refused (coordinator/worker_auth.h).
  prometheus::Counter& WorkerAuthRefused(const std::string& reason);
  // tpserve:worker_plane_info{auth,bind,insecure} = 1: how the worker plane admits workers.
  void SetWorkerPlane(const std::string& auth, const std::string& bind, bool insecure);
  // tpserve:weight_format_info{weight_format,dtype} = 1: how the layer projections are stored (ModelInfo).
  void SetWeightFormat(const std::string& weight_format, const std::string& dtype);
  prometheus::Histogram& WorkerStepTime(int rank) { return *worker_step_[rank]; }
  prometheus::Histogram& WorkerAllReduceTime(int rank) { return *worker_allreduce_[rank]; }

  // Gauges.
  prometheus::Gauge* num_requests_running;
  prometheus::Gauge* num_requests_waiting;
  prometheus::Gauge* kv_cache_usage_perc;
  // Counters.
  prometheus::Counter* prompt_tokens_total;
  prometheus::Counter* generation_tokens_total;
  prometheus::Counter* num_preemptions_total;
  prometheus::Counter* prefix_cache_queries_total;
  prometheus::Counter* prefix_cache_hits_total;
  prometheus::Counter* request_failure_total;  // non-OK terminations (UNAVAILABLE, INTERNAL)
  // Speculative decoding (issue 17; vLLM names in docs/METRICS.md).
  prometheus::Counter* spec_decode_num_drafts_total;
  prometheus::Counter* spec_decode_num_draft_tokens_total;
  prometheus::Counter* spec_decode_num_accepted_tokens_total;
  // Histograms.
  prometheus::Histogram* time_to_first_token_seconds;
  prometheus::Histogram* inter_token_latency_seconds;
  prometheus::Histogram* e2e_request_latency_seconds;
  prometheus::Histogram* request_queue_time_seconds;
  prometheus::Histogram* request_prefill_time_seconds;
  prometheus::Histogram* request_decode_time_seconds;
  prometheus::Histogram* request_prompt_tokens;
  prometheus::Histogram* request_generation_tokens;
  prometheus::Histogram* iteration_tokens_total;
  prometheus::Histogram* spec_decode_acceptance_length;  // 1 + accepted proposals, per verify step

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::string model_name_;
  prometheus::Family<prometheus::Counter>* request_success_family_;
  prometheus::Family<prometheus::Gauge>* cache_config_family_;
  prometheus::Family<prometheus::Counter>* worker_auth_refused_family_;
  prometheus::Family<prometheus::Gauge>* worker_plane_family_;
  prometheus::Family<prometheus::Gauge>* weight_format_family_;
  std::vector<prometheus::Gauge*> worker_up_;
  std::vector<prometheus::Histogram*> worker_step_;
  std::vector<prometheus::Histogram*> worker_allreduce_;
};

}  // namespace tpserve::coordinator
