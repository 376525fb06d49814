// Flags for serve/coordinator and the coordinator's lifecycle: start, wait for workers, serve, drain on
// SIGTERM, exit. A config file can hold any of these flags: --flagfile=FILE (one --flag=value per line).
#include "cli/server_flags.h"

#include <signal.h>

#include <cmath>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include <cstring>
#include "absl/strings/str_cat.h"
#include "common/cluster_auth.h"
#include "common/credentials.h"
#include "common/log.h"
#include "cli/shared_flags.h"
#include "common/model_config.h"
#include "coordinator/engine/scheduler.h"
#include "worker/draft_runner.h"
#include "worker/model/quantization.h"
#include "worker/model/shard_spec.h"

ABSL_FLAG(std::string, model, "",
          "model directory (Hugging Face layout: config.json, tokenizer.model, *.safetensors or pytorch_model*.bin). "
          "serve: empty = a generated random-weight model (see README)");
ABSL_FLAG(std::string, model_name, "", "model name reported by the API and metrics (default: directory name)");
ABSL_FLAG(std::string, host, "0.0.0.0", "public gRPC API bind address");
ABSL_FLAG(int, port, 50051, "public gRPC API port (0 = ephemeral, see --port-file)");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "metrics / health HTTP bind address");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics, /health and /ready HTTP port (0 = ephemeral, -1 = off)");
ABSL_FLAG(std::string, worker_host, "0.0.0.0", "worker control-plane bind address");
ABSL_FLAG(int, worker_port, 50052, "worker control-plane port that `tpserve worker --coordinator` dials (0 = ephemeral)");
ABSL_FLAG(std::string, port_file, "", "write the bound ports as JSON to this file once listening");
ABSL_FLAG(int, tp, 1, "tensor-parallel degree: number of worker processes (serve) or expected workers (coordinator)");
ABSL_FLAG(std::string, dtype, "auto", "weight dtype in memory: auto (as stored), bfloat16 or float32");
ABSL_FLAG(std::string, quantization, "none",
          "weights: none (as --dtype) or int8 (weight-only, per output channel, quantized at load; "
          "embedding and lm_head keep --dtype; see docs/QUANTIZATION.md)");
ABSL_FLAG(bool, quantize_lm_head, false, "with --quantization int8: lm_head in int8 too");
ABSL_FLAG(std::string, kv_cache_memory, "1GiB",
          "KV cache budget per worker (e.g. 2GiB, 512MiB); 0 = --kv-memory-fraction of free GPU memory");
ABSL_FLAG(double, kv_memory_fraction, 0.9, "fraction of free device memory for KV cache when --kv-cache-memory=0");
ABSL_FLAG(int, max_kv_blocks, 0, "cap on KV cache blocks (0 = as many as the budget affords)");
ABSL_FLAG(int, block_size, 16, "tokens per KV cache block");
ABSL_FLAG(int, max_num_seqs, 256, "maximum sequences in one batch");
ABSL_FLAG(int, max_num_batched_tokens, 2048, "token budget per engine step (prefill chunks + decodes)");
ABSL_FLAG(int, max_queued_requests, 1024, "waiting requests beyond which new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_model_len, 0, "context length (0 = the model's max_position_embeddings)");
ABSL_FLAG(int, max_prompt_tokens, 0, "largest accepted prompt in tokens (0 = context length - 1)");
ABSL_FLAG(int, max_new_tokens_limit, 0, "largest accepted max_new_tokens (0 = up to the context length)");
ABSL_FLAG(bool, enable_prefix_caching, true, "reuse KV blocks of shared prompt prefixes across requests");
ABSL_FLAG(std::string, speculative_method, "",
          "speculative decoding: empty = off, ngram = propose the tokens that followed the latest earlier occurrence "
          "of the last n tokens (prompt lookup), draft = a small model sharing the tokenizer proposes "
          "(--draft-model); output is unchanged either way (docs/SPECULATIVE.md)");
ABSL_FLAG(std::string, draft_model, "",
          "with --speculative-method draft: the draft model directory (like --model; same vocab, bos and eos), "
          "loaded whole by rank 0's worker");
ABSL_FLAG(int, num_speculative_tokens, 4, "with --speculative-method: most tokens proposed per step, in [1, 16]");
ABSL_FLAG(int, ngram_max, 4, "with --speculative-method ngram: longest n-gram matched (tried first)");
ABSL_FLAG(int, ngram_min, 1, "with --speculative-method ngram: shortest n-gram matched");
ABSL_FLAG(int, speculative_step_tokens, 0,
          "with --speculative-method: query tokens a step can run at about a plain decode step's cost (measure "
          "with engine-bench --verify-tokens); with B running sequences each gets at most N / B - 1 proposals, "
          "so large batches speculate less or not at all (0 = no batch-size cap; docs/SPECULATIVE.md)");
ABSL_FLAG(std::string, comm_backend, "auto", "collectives between workers: auto (nccl on GPU, gloo on CPU), gloo, nccl");
ABSL_FLAG(int, drain_timeout, 30, "seconds to let in-flight requests finish after SIGTERM");
ABSL_FLAG(int, recovery_timeout, 60, "seconds to hold in-flight requests for a lost worker to return");
ABSL_FLAG(int, step_timeout, 600, "seconds one engine step may take before the group is declared lost");
ABSL_FLAG(int, load_timeout, 3600, "seconds to wait for all workers to register and load");
ABSL_FLAG(bool, log_prompts, false, "include prompt text in logs (off: logs never hold prompt text)");
ABSL_FLAG(bool, log_requests, true, "one structured log line per finished request");
ABSL_FLAG(std::string, tls_cert, "", "TLS certificate chain (PEM) for the public API (plaintext when empty)");
ABSL_FLAG(std::string, tls_key, "", "TLS private key (PEM) for the public API");
ABSL_FLAG(std::string, tls_client_ca, "", "when set, public API clients must present a certificate signed by this CA");
ABSL_FLAG(int, max_message_bytes, 4 << 20, "largest request message accepted on the public API");
ABSL_FLAG(int, max_concurrent_streams, 100, "concurrent RPCs allowed per client connection");
ABSL_FLAG(std::string, chat_template, "",
          "render chat with this template instead of the model's own chat_template: tulu, llama-2-chat, vicuna, "
          "zephyr or chatml (empty = the model's; Tulu when the model has none; see docs/API.md)");
ABSL_FLAG(bool, insecure_worker_plane, false,
          "coordinator: allow the worker plane on a non-loopback --worker-host with neither --cluster-token-file nor "
          "--cluster-ca/--cluster-cert/--cluster-key (any process that reaches the port could take a rank); "
          "logged as a warning and exported as tpserve:worker_plane_info{insecure=\"true\"}");
// The OpenAI-compatible HTTP API (issue 16). It binds --host and takes --tls-*, --api-key-file and
// --max-message-bytes from the gRPC API.
ABSL_FLAG(int, http_port, 8000, "OpenAI-compatible HTTP API port on --host (0 = ephemeral, -1 = off)");
ABSL_FLAG(std::string, served_model_name, "",
          "model name the APIs serve and requests must name (vLLM's spelling of --model-name; default: directory name)");

namespace tpserve::cli {

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  static const std::pair<const char*, double> kUnits[] = {
      {"gib", 1073741824.0}, {"mib", 1048576.0}, {"kib", 1024.0}, {"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3},
      {"g", 1073741824.0},  {"m", 1048576.0},   {"k", 1024.0},   {"b", 1.0}};
  double mult = 1.0;
  for (const auto& [suffix, m] : kUnits) {
    if (absl::EndsWith(s, suffix)) {
      s.resize(s.size() - std::strlen(suffix));
      mult = m;
      break;
    }
  }
  double v;
  if (!absl::SimpleAtod(s, &v) || v < 0 || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a size: use e.g. 2GiB, 512MiB or bytes"));
  }
  return static_cast<int64_t>(v * mult);
}

absl::StatusOr<coordinator::CoordinatorOptions> CoordinatorOptionsFromFlags() {
  coordinator::CoordinatorOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.model_name = absl::GetFlag(FLAGS_model_name);
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.worker_host = absl::GetFlag(FLAGS_worker_host);
  o.worker_port = absl::GetFlag(FLAGS_worker_port);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  o.http_port = absl::GetFlag(FLAGS_http_port);
  if (o.http_port < -1 || o.http_port > 65535) return absl::InvalidArgumentError("--http-port must be in [-1, 65535]");
  if (const std::string served = absl::GetFlag(FLAGS_served_model_name); !served.empty()) {
    if (!o.model_name.empty() && o.model_name != served) {
      return absl::InvalidArgumentError("--served-model-name and --model-name disagree: set one of them");
    }
    o.model_name = served;
  }
  auto& g = o.group;
  g.world_size = absl::GetFlag(FLAGS_tp);
  if (g.world_size < 1 || g.world_size > 64) return absl::InvalidArgumentError("--tp must be in [1, 64]");
  g.dtype = absl::GetFlag(FLAGS_dtype);
  if (g.dtype != "auto" && g.dtype != "bfloat16" && g.dtype != "float32") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype '", g.dtype, "': expected auto, bfloat16 or float32"));
  }
  auto quantization = model::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  if (!quantization.ok()) return quantization.status();
  g.quantization = model::WeightQuantizationName(*quantization);
  g.quantize_lm_head = absl::GetFlag(FLAGS_quantize_lm_head);
  if (g.quantize_lm_head && *quantization != model::WeightQuantization::kInt8) {
    return absl::InvalidArgumentError("--quantize-lm-head needs --quantization int8");
  }
  auto kv = ParseBytes(absl::GetFlag(FLAGS_kv_cache_memory));
  if (!kv.ok()) return absl::InvalidArgumentError(absl::StrCat("--kv-cache-memory: ", kv.status().message()));
  g.kv_cache_bytes = *kv;
  g.kv_memory_fraction = static_cast<float>(absl::GetFlag(FLAGS_kv_memory_fraction));
  if (!(g.kv_memory_fraction > 0 && g.kv_memory_fraction <= 1)) {
    return absl::InvalidArgumentError("--kv-memory-fraction must be in (0, 1]");
  }
  g.max_kv_blocks = absl::GetFlag(FLAGS_max_kv_blocks);
  g.block_size = absl::GetFlag(FLAGS_block_size);
  if (g.block_size < 1 || g.block_size > 1024) return absl::InvalidArgumentError("--block-size must be in [1, 1024]");
  // Batch shape is the scheduler's alone: the workers size nothing from it.
  o.engine.scheduler.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  if (o.engine.scheduler.max_num_seqs < 1) return absl::InvalidArgumentError("--max-num-seqs must be >= 1");
  o.engine.scheduler.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  if (o.engine.scheduler.max_num_batched_tokens < 1) {
    return absl::InvalidArgumentError("--max-num-batched-tokens must be >= 1");
  }
  g.comm_backend = absl::GetFlag(FLAGS_comm_backend);
  if (g.comm_backend != "auto" && g.comm_backend != "gloo" && g.comm_backend != "nccl") {
    return absl::InvalidArgumentError("--comm-backend must be auto, gloo or nccl");
  }
  o.engine.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  if (o.engine.max_queued_requests < 1) return absl::InvalidArgumentError("--max-queued-requests must be >= 1");
  o.engine.scheduler.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  const std::string method = absl::GetFlag(FLAGS_speculative_method);
  const std::string draft_model = absl::GetFlag(FLAGS_draft_model);
  if (method != "ngram" && method != "draft" && !method.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--speculative-method '", method, "': expected ngram, draft (or empty for off)"));
  }
  if (method == "draft" && draft_model.empty()) {
    return absl::InvalidArgumentError("--speculative-method draft needs --draft-model DIR (the draft model)");
  }
  if (method != "draft" && !draft_model.empty()) {
    return absl::InvalidArgumentError("--draft-model is only used with --speculative-method draft");
  }
  if (!method.empty()) {
    auto& spec = o.engine.scheduler.speculative;
    spec.num_speculative_tokens = absl::GetFlag(FLAGS_num_speculative_tokens);
    spec.method = method == "draft" ? coordinator::SpeculativeMethod::kDraft : coordinator::SpeculativeMethod::kNgram;
    spec.step_tokens = absl::GetFlag(FLAGS_speculative_step_tokens);
    spec.ngram = {absl::GetFlag(FLAGS_ngram_min), absl::GetFlag(FLAGS_ngram_max)};
    if (absl::Status s = coordinator::ValidateSpeculativeConfig(spec, /*min_tokens=*/1); !s.ok()) return s;
    g.draft_model_path = draft_model;
  }
  o.engine.recovery_timeout = absl::Seconds(absl::GetFlag(FLAGS_recovery_timeout));
  o.engine.step_timeout = absl::Seconds(absl::GetFlag(FLAGS_step_timeout));
  g.step_timeout = o.engine.step_timeout;  // the workers' NCCL watchdog aborts a collective after it
  o.engine.log_prompts = absl::GetFlag(FLAGS_log_prompts);
  o.engine.log_requests = absl::GetFlag(FLAGS_log_requests);
  o.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  o.limits.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  o.limits.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens_limit);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  if (o.max_message_bytes < 1024 || o.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError("--max-message-bytes must be >= 1024 and --max-concurrent-streams >= 1");
  }
  o.chat_template = absl::GetFlag(FLAGS_chat_template);  // checked with the model's template at startup
  o.api_tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_client_ca)};
  o.cluster_tls = {absl::GetFlag(FLAGS_cluster_cert), absl::GetFlag(FLAGS_cluster_key), absl::GetFlag(FLAGS_cluster_ca)};
  if (!absl::GetFlag(FLAGS_cluster_token_file).empty()) {
    auto token = cluster_auth::ReadClusterToken(absl::GetFlag(FLAGS_cluster_token_file));
    if (!token.ok()) return token.status();
    o.cluster_token = *token;
  }
  o.insecure_worker_plane = absl::GetFlag(FLAGS_insecure_worker_plane);
  if (!absl::GetFlag(FLAGS_api_key_file).empty()) {
    auto key = ReadSmallFile(absl::GetFlag(FLAGS_api_key_file), "--api-key-file");
    if (!key.ok()) return key.status();
    o.api_key = std::string(absl::StripAsciiWhitespace(*key));
  }
  return o;
}

namespace {

std::atomic<int> g_signals{0};

}  // namespace

int RunCoordinator(coordinator::CoordinatorOptions options, const CoordinatorHooks& hooks) {
  SetLogTag("coordinator");
  // Signals are taken by a dedicated thread (sigwait), so no handler runs inside gRPC or engine code.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Refuse a bad tensor-parallel split before any worker starts (the workers check again at load).
  {
    auto config = LoadModelConfig(options.model_dir);
    absl::Status s = config.ok() ? model::ValidateTensorParallel(*config, options.group.world_size) : config.status();
    // A draft that cannot share the tokenizer is refused here too, before any worker loads anything.
    if (s.ok() && !options.group.draft_model_path.empty()) {
      auto draft = LoadModelConfig(options.group.draft_model_path);
      s = draft.ok() ? worker::CheckDraftMatchesTarget(*draft, *config)
                     : absl::Status(draft.status().code(), absl::StrCat("--draft-model ", options.group.draft_model_path,
                                                                        ": ", draft.status().message()));
    }
    if (!s.ok()) {
      std::fprintf(stderr, "tpserve: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  const absl::Duration drain_timeout = absl::Seconds(absl::GetFlag(FLAGS_drain_timeout));
  const absl::Duration load_timeout = absl::Seconds(absl::GetFlag(FLAGS_load_timeout));
  coordinator::CoordinatorServer server(std::move(options));
  absl::Status s = server.Start();
  if (!s.ok()) {
    std::fprintf(stderr, "tpserve: %s\n", std::string(s.message()).c_str());
    if (hooks.on_exit) hooks.on_exit();
    return 1;
  }
  std::thread signal_thread([&set] {
    while (true) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      int n = ++g_signals;
      if (n >= 2) {
        TP_LOG(WARNING) << "second signal: exiting now";
        std::_Exit(1);
      }
      TP_LOG(INFO) << "signal " << sig << ": draining (send again to exit at once)";
      return;
    }
  });
  signal_thread.detach();

  if (hooks.on_started) {
    s = hooks.on_started(server);
    if (!s.ok()) {
      std::fprintf(stderr, "tpserve: %s\n", std::string(s.message()).c_str());
      server.Shutdown();
      if (hooks.on_exit) hooks.on_exit();
      return 1;
    }
  }
  // Wait for the group unless a signal comes first.
  std::atomic<bool> serving_done{false};
  absl::Status serve_status;
  std::thread waiter([&] {
    serve_status = server.WaitUntilServing(load_timeout);
    serving_done = true;
  });
  while (!serving_done && g_signals.load() == 0) absl::SleepFor(absl::Milliseconds(50));
  if (!serving_done) {
    server.Drain(absl::ZeroDuration());  // unblocks WaitUntilServing
  }
  waiter.join();
  int code = 0;
  if (!serve_status.ok() && g_signals.load() == 0) {
    std::fprintf(stderr, "tpserve: %s\n", std::string(serve_status.message()).c_str());
    code = 1;
  } else {
    while (g_signals.load() == 0) absl::SleepFor(absl::Milliseconds(50));
    server.Drain(drain_timeout);
  }
  server.Shutdown();
  if (hooks.on_exit) hooks.on_exit();
  TP_LOG(INFO) << "exiting";
  return code;
}

int CoordinatorCommand() {
  auto o = CoordinatorOptionsFromFlags();
  if (!o.ok()) {
    std::fprintf(stderr, "tpserve coordinator: %s\n", std::string(o.status().message()).c_str());
    return 2;
  }
  if (o->model_dir.empty()) {
    std::fprintf(stderr, "tpserve coordinator: --model is required\n");
    return 2;
  }
  return RunCoordinator(std::move(*o), {});
}

}  // namespace tpserve::cli
