// Implementation of coordinator/coordinator_server.h.
#include "coordinator/coordinator_server.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "prometheus/text_serializer.h"

namespace tpserve::coordinator {

namespace v1 = tpserve::v1;

namespace {

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t p = path.rfind('/');
  return p == std::string::npos ? path : path.substr(p + 1);
}

// The device kinds the loaded workers reported in their Hello ("cpu", "cuda:1" -> "cuda"), distinct and joined
// by ","; the coordinator has no device of its own, so a multi-node deployment reports what its workers run on.
std::string GroupDevice(const std::vector<WorkerStatus>& workers) {
  std::vector<std::string> kinds;
  for (const auto& w : workers) {
    std::string kind = w.device.substr(0, w.device.find(':'));
    if (!kind.empty() && std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  }
  return absl::StrJoin(kinds, ",");
}

// Completes when the warm-up request ends.
class WarmupSink : public RequestSink {
 public:
  void OnDelta(const v1::GenerateStreamResponse& d) override {
    if (d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED && !done_.HasBeenNotified()) done_.Notify();
  }
  void OnError(const absl::Status& s, const v1::GenerateStreamResponse* /*last*/) override {
    status_ = s;
    if (!done_.HasBeenNotified()) done_.Notify();
  }
  absl::Notification done_;
  absl::Status status_;
};

}  // namespace

CoordinatorServer::CoordinatorServer(CoordinatorOptions options) : options_(std::move(options)) {}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

absl::Status CoordinatorServer::Start() {
  auto config = LoadModelConfig(options_.model_dir);
  if (!config.ok()) return config.status();
  config_ = *config;
  auto tok = Tokenizer::Load(options_.model_dir, TokenizerOptions{options_.chat_template});
  if (!tok.ok()) return tok.status();
  tokenizer_ = std::move(*tok);
  TP_LOG(INFO) << "chat template: " << ChatTemplateName(tokenizer_->chat_template())
               << (options_.chat_template.empty() ? " (the model's)" : " (--chat-template)");
  if (options_.model_name.empty()) options_.model_name = BaseName(options_.model_dir);
  int max_len = options_.max_model_len > 0 ? std::min(options_.max_model_len, config_.max_position_embeddings)
                                           : config_.max_position_embeddings;
  options_.limits.max_model_len = max_len;
  options_.engine.scheduler.max_model_len = max_len;
  options_.engine.scheduler.block_size = options_.group.block_size;
  options_.group.model_path = options_.model_dir;

  metrics_ = std::make_unique<Metrics>(options_.model_name, options_.group.world_size);
  // Who may join the tensor-parallel group (coordinator/worker_auth.h): refused before any port opens when
  // the worker plane would admit anyone on a network address.
  const bool worker_auth = options_.cluster_tls.enabled() || !options_.cluster_token.empty();
  if (absl::Status s = CheckWorkerPlaneExposure(options_.worker_host, worker_auth, options_.insecure_worker_plane);
      !s.ok()) {
    return s;
  }
  std::shared_ptr<WorkerAuthenticator> auth;
  {
    WorkerAuthOptions ao;
    ao.token = options_.cluster_token;
    if (options_.cluster_tls.enabled() && !options_.cluster_tls.ca.empty()) {
      auto ca = ReadSmallFile(options_.cluster_tls.ca, "--cluster-ca");
      if (!ca.ok()) return ca.status();
      ao.cluster_ca_pem = *ca;
    }
    auto a = WorkerAuthenticator::Create(ao);
    if (!a.ok()) return a.status();
    auth = std::move(*a);
  }
  const bool loopback = IsLoopbackHost(options_.worker_host);
  const bool insecure = !worker_auth && !loopback;
  metrics_->SetWorkerPlane(auth->mode(), loopback ? "loopback" : "network", insecure);
  if (insecure) {
    TP_LOG(WARNING) << "INSECURE: --insecure-worker-plane: the worker plane on " << options_.worker_host
                    << " admits any process that reaches it as a tensor-parallel rank (it would see every prompt "
                       "and choose every token). Use --cluster-token-file or --cluster-ca/--cluster-cert/--cluster-key";
  }
  pool_ = std::make_unique<WorkerPool>(options_.group, auth->mode() == "none" ? nullptr : auth);
  pool_->SetRefusalListener([m = metrics_.get()](const std::string& reason) { m->WorkerAuthRefused(reason).Increment(); });

  ApiServiceOptions api;
  api.model_name = options_.model_name;
  api.model_config = config_;
  api.limits = options_.limits;
  api.tensor_parallel_size = options_.group.world_size;
  api.api_key = options_.api_key;
  api.dtype = options_.group.dtype == "auto" ? DTypeName(config_.torch_dtype) : options_.group.dtype;
  api.weight_format = options_.group.quantization != "int8" ? api.dtype
                      : options_.group.quantize_lm_head     ? "int8+lm_head"
                                                            : "int8";
  metrics_->SetWeightFormat(api.weight_format, api.dtype);
  api_ = std::make_unique<GenerationService>(api, tokenizer_.get());

  auto cluster_creds = MakeClusterServerCredentials(options_.cluster_tls);
  if (!cluster_creds.ok()) return cluster_creds.status();
  auto api_creds = MakeServerCredentials(options_.api_tls, /*require_client_cert=*/!options_.api_tls.ca.empty());
  if (!api_creds.ok()) return api_creds.status();
  // Control plane first, so workers can register while the public port comes up.
  {
    grpc::ServerBuilder b;
    b.AddListeningPort(absl::StrCat(options_.worker_host, ":", options_.worker_port), *cluster_creds,
                       &worker_port_);
    b.RegisterService(pool_.get());
    b.SetMaxReceiveMessageSize(64 << 20);
    b.SetMaxSendMessageSize(64 << 20);
    // Workers ping every 10 s (worker_service.cc) and keep pinging through a step that sends nothing for
    // minutes (a 13B CPU prefill, a 26 GB load). gRPC's server default takes any ping within 5 min of the
    // last one without data as a strike and sends GOAWAY "too_many_pings" after two: accept one per 5 s.
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    worker_server_ = b.BuildAndStart();
    if (!worker_server_ || worker_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for workers on ", options_.worker_host, ":",
                                                 options_.worker_port, " (--worker-port in use?)"));
    }
  }
  {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder b;
    b.AddListeningPort(absl::StrCat(options_.host, ":", options_.port), *api_creds, &port_);
    b.RegisterService(api_.get());
    b.SetMaxReceiveMessageSize(options_.max_message_bytes);
    b.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams);
    public_server_ = b.BuildAndStart();
    if (!public_server_ || port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", options_.host, ":", options_.port, " (--port in use?)"));
    }
    auto* health = public_server_->GetHealthCheckService();
    health->SetServingStatus(false);
  }
  if (absl::Status s = StartHttp(); !s.ok()) return s;
  if (!options_.port_file.empty()) {
    std::string tmp = options_.port_file + ".tmp";
    std::ofstream f(tmp);
    f << absl::StrFormat("{\"port\": %d, \"worker_port\": %d, \"metrics_port\": %d, \"http_port\": %d}\n", port_,
                         worker_port_, metrics_port_, http_port_);
    f.close();
    std::rename(tmp.c_str(), options_.port_file.c_str());
  }
  TP_LOG(INFO) << "coordinator listening: api " << options_.host << ":" << port_ << ", workers "
               << options_.worker_host << ":" << worker_port_ << " (worker auth: " << auth->mode() << "), metrics "
               << options_.metrics_host << ":" << metrics_port_ << ", openai http " << http_port_ << "; waiting for "
               << options_.group.world_size << " worker(s)";
  monitor_ = std::thread([this] { MonitorLoop(); });
  return absl::OkStatus();
}

absl::Status CoordinatorServer::WaitUntilServing(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!pool_->WaitReady(absl::Milliseconds(200))) {
    if (!pool_->load_error().ok()) return pool_->load_error();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the worker group did not become ready within ",
                                                      absl::FormatDuration(timeout), " (--load-timeout)"));
    }
    if (draining_) return absl::CancelledError("shutdown requested during startup");
  }
  const int blocks = pool_->num_kv_blocks();
  options_.engine.scheduler.num_blocks = blocks;
  engine_ = std::make_unique<Engine>(options_.engine, pool_.get(), tokenizer_.get(), metrics_.get());
  engine_->Start();
  metrics_->SetCacheConfig(options_.group.block_size, blocks);

  // Warm-up: one real step through every worker before declaring SERVING.
  RequestSpec warm;
  warm.request_id = "warmup";
  warm.internal = true;
  warm.prompt_ids = {tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : 1};
  warm.max_new_tokens = 1;
  warm.sampling.set_temperature(0);
  warm.sampling.set_top_p(1);
  warm.sampling.set_repetition_penalty(1);
  auto sink = std::make_shared<WarmupSink>();
  auto handle = engine_->Submit(warm, sink);
  if (!handle.ok()) return handle.status();
  if (!sink->done_.WaitForNotificationWithTimeout(std::max(deadline - absl::Now(), absl::Seconds(60)))) {
    return absl::DeadlineExceededError("warm-up step did not finish");
  }
  if (!sink->status_.ok()) return sink->status_;

  const int64_t bytes_per_block = pool_->kv_bytes_per_block();
  const double gib = static_cast<double>(bytes_per_block) * blocks / (1024.0 * 1024 * 1024);
  std::string line = absl::StrFormat("KV cache: %d blocks of %d tokens = %d tokens, %.2f GiB", blocks,
                                     options_.group.block_size, static_cast<int64_t>(blocks) * options_.group.block_size,
                                     gib);
  if (options_.group.world_size > 1) absl::StrAppendFormat(&line, " per worker (x%d workers)", options_.group.world_size);
  TP_LOG(INFO) << line;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  api_->SetDevice(GroupDevice(pool_->Status()));
  api_->SetEngine(engine_.get(), blocks, options_.group.block_size);
  if (openai_) openai_->SetEngine(engine_.get());
  serving_started_ = true;
  TP_LOG(INFO) << "serving " << options_.model_name << " on port " << port_;
  return absl::OkStatus();
}

void CoordinatorServer::AddProbes(http::Server* server) {
  server->Handle("GET", "/health", [](const http::Request&, std::shared_ptr<http::Exchange> x) {
    x->Reply(http::Response{200, "text/plain; charset=utf-8", "ok\n", {}});
  });
  server->Handle("GET", "/ready", [this](const http::Request&, std::shared_ptr<http::Exchange> x) {
    bool ready = ComputeReady();
    x->Reply(http::Response{ready ? 200 : 503, "text/plain; charset=utf-8",
                            ready ? "ready\n" : (draining_ ? "draining\n" : "not ready\n"), {}});
  });
}

absl::Status CoordinatorServer::StartHttp() {
  if (options_.metrics_port >= 0) {
    // Probes and scrapers: one thread (every handler answers at once), short timeouts, plaintext.
    http::ServerOptions o;
    o.name = "metrics";
    o.host = options_.metrics_host;
    o.port = options_.metrics_port;
    o.threads = 1;
    o.max_connections = 256;
    o.read_timeout = absl::Seconds(5);
    o.write_timeout = absl::Seconds(10);
    o.max_body_bytes = 4096;
    metrics_http_ = std::make_unique<http::Server>(o);
    auto registry = metrics_->registry();
    metrics_http_->Handle("GET", "/metrics", [registry](const http::Request&, std::shared_ptr<http::Exchange> x) {
      prometheus::TextSerializer serializer;
      x->Reply(http::Response{200, "text/plain; version=0.0.4; charset=utf-8", serializer.Serialize(registry->Collect()), {}});
    });
    AddProbes(metrics_http_.get());
    auto p = metrics_http_->Start();
    if (!p.ok()) return p.status();
    metrics_port_ = *p;
  }
  if (options_.http_port >= 0) {
    openai_ = std::make_unique<openai::OpenAiService>(
        openai::OpenAiServiceOptions{options_.model_name, options_.api_key, options_.limits}, tokenizer_.get());
    // The API key and TLS of the gRPC API apply here too; the body limit is gRPC's message limit.
    http::ServerOptions o;
    o.name = "openai";
    o.host = options_.host;
    o.port = options_.http_port;
    o.threads = 4;
    o.max_connections = 1024;
    o.read_timeout = absl::Seconds(30);
    o.write_timeout = absl::Seconds(30);
    o.max_body_bytes = options_.max_message_bytes;
    o.tls = options_.api_tls;
    openai_http_ = std::make_unique<http::Server>(o);
    openai_->Register(openai_http_.get());
    AddProbes(openai_http_.get());
    auto p = openai_http_->Start();
    if (!p.ok()) {
      return absl::Status(p.status().code(), absl::StrCat(p.status().message(), " (--http-port in use?)"));
    }
    http_port_ = *p;
  }
  return absl::OkStatus();
}

bool CoordinatorServer::ComputeReady() const {
  return serving_started_ && !draining_ && pool_ && pool_->IsReady();
}

void CoordinatorServer::MonitorLoop() {
  bool first = true;
  while (!stop_monitor_) {
    bool ready = ComputeReady();
    if (first || ready != last_ready_) {
      public_server_->GetHealthCheckService()->SetServingStatus(ready);
      if (!first) TP_LOG(INFO) << "health: " << (ready ? "SERVING" : "NOT_SERVING");
      last_ready_ = ready;
      first = false;
    }
    for (const auto& w : pool_->Status()) metrics_->WorkerUp(w.rank).Set(w.connected && w.loaded ? 1 : 0);
    absl::SleepFor(absl::Milliseconds(100));
  }
}

bool CoordinatorServer::Drain(absl::Duration timeout) {
  draining_ = true;
  if (public_server_) public_server_->GetHealthCheckService()->SetServingStatus(false);
  if (!engine_) return true;
  engine_->StopAccepting();
  TP_LOG(INFO) << "draining: " << engine_->num_in_flight() << " request(s) in flight, up to "
               << absl::FormatDuration(timeout);
  absl::Time deadline = absl::Now() + timeout;
  while (engine_->num_in_flight() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  bool drained = engine_->num_in_flight() == 0;
  TP_LOG(INFO) << (drained ? "drained" : "drain timeout: the remaining requests end UNAVAILABLE");
  return drained;
}

void CoordinatorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  draining_ = true;
  stop_monitor_ = true;
  if (monitor_.joinable()) monitor_.join();
  if (engine_) engine_->Stop();  // ends what is left UNAVAILABLE (DRAINING)
  if (public_server_) public_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (pool_) pool_->Shutdown("coordinator shutting down");
  if (worker_server_) worker_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (openai_http_) openai_http_->Stop();
  if (metrics_http_) metrics_http_->Stop();
}

}  // namespace tpserve::coordinator
