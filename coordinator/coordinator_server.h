// The coordinator process: the public gRPC endpoint (Generation + health + reflection), the worker
// control plane (WorkerControl), and the metrics/health HTTP port, around one Engine. Health tells the truth:
// SERVING only while every worker is loaded and answering and the server is not draining.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/model_config.h"
#include "coordinator/api_service.h"
#include "coordinator/engine.h"
#include "coordinator/http/http_server.h"
#include "coordinator/metrics.h"
#include "coordinator/openai/openai_service.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/worker_pool.h"
#include "grpcpp/server.h"

namespace tpserve::coordinator {

struct CoordinatorOptions {
  std::string model_dir;
  std::string model_name;           // default: the model directory's name
  std::string host = "0.0.0.0";
  int port = 50051;                 // public API; 0 = ephemeral
  std::string worker_host = "0.0.0.0";
  int worker_port = 50052;          // control plane; 0 = ephemeral
  std::string metrics_host = "0.0.0.0";
  int metrics_port = 9090;          // 0 = ephemeral, -1 = off
  int http_port = 8000;             // OpenAI-compatible HTTP API on `host`; 0 = ephemeral, -1 = off
  std::string port_file;            // when set: JSON {"port","worker_port","metrics_port","http_port"} written after binding
  WorkerGroupOptions group;
  EngineOptions engine;             // scheduler.num_blocks and max_model_len are filled in at startup
  ValidationLimits limits;
  int max_model_len = 0;            // 0 = the model's max_position_embeddings
  int max_message_bytes = 4 << 20;
  int max_concurrent_streams = 100;  // per client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
  TlsFiles api_tls;                   // TLS for the public API (cert + key; ca => clients must present certs)
  TlsFiles cluster_tls;               // mutual TLS for the worker control plane
  std::string cluster_token;          // when set, workers prove they hold it (common/cluster_auth.h)
  bool insecure_worker_plane = false;  // allow a non-loopback worker plane without authentication
  std::string api_key;                // when set, clients must send "authorization: Bearer <key>"
  std::string chat_template;          // --chat-template: a ChatTemplateName overriding the model's ("" = its own)
};

class CoordinatorServer {
 public:
  explicit CoordinatorServer(CoordinatorOptions options);
  ~CoordinatorServer();

  // Loads config + tokenizer, binds every port (health NOT_SERVING). Fails fast on bad configuration.
  absl::Status Start();
  int port() const { return port_; }
  int worker_port() const { return worker_port_; }
  int metrics_port() const { return metrics_port_; }
  int http_port() const { return http_port_; }

  // Waits for the worker group, sizes the scheduler from the KV pool, runs a warm-up step, starts the
  // engine and turns health SERVING. Prints the KV sizing line.
  absl::Status WaitUntilServing(absl::Duration timeout);

  // Drain: health NOT_SERVING, new requests UNAVAILABLE; returns true when in-flight requests finished
  // within `timeout`.
  bool Drain(absl::Duration timeout);
  void Shutdown();

  WorkerPool& pool() { return *pool_; }
  Engine* engine() { return engine_.get(); }

 private:
  void MonitorLoop();
  bool ComputeReady() const;
  // /health and /ready, served on the metrics port and on the OpenAI port.
  void AddProbes(http::Server* server);
  absl::Status StartHttp();

  CoordinatorOptions options_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<GenerationService> api_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<grpc::Server> public_server_;
  std::unique_ptr<grpc::Server> worker_server_;
  std::unique_ptr<openai::OpenAiService> openai_;
  std::unique_ptr<http::Server> metrics_http_;  // its own pool: API traffic cannot delay probes
  std::unique_ptr<http::Server> openai_http_;
  int port_ = 0;
  int worker_port_ = 0;
  int metrics_port_ = -1;
  int http_port_ = -1;
  std::atomic<bool> draining_{false};
  std::atomic<bool> serving_started_{false};
  std::atomic<bool> stop_monitor_{false};
  std::atomic<bool> last_ready_{false};
  std::thread monitor_;
  bool shut_down_ = false;
};

}  // namespace tpserve::coordinator
