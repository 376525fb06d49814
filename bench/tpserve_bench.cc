// tpserve-bench: load generator for a running tpserve server, or any OpenAI-compatible server. Streams requests
// (tpserve's gRPC GenerateStream, or OpenAI streaming completions / chat completions over HTTP) in a closed loop
// (--concurrency) or an open loop (--request-rate, Poisson/gamma or constant arrivals) and reports throughput,
// TTFT/TPOT/ITL/E2E percentiles, goodput, a per-second timeline and per-request rows: the same workload and
// report for both APIs, so tpserve and its peers (vLLM, TGI) are measured by one harness.
//   tpserve-bench --server 127.0.0.1:50051 --num-requests 200 --concurrency 8 --input-len 128 --output-len 128
//   tpserve-bench --server ... --request-rate 20 --burstiness 0.5 --duration 60 --json run.json --compare old.json
//   tpserve-bench --api openai --url http://127.0.0.1:8000 --tokenizer /models/tulu-13b --concurrency 8
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/grpc_client.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/local_prompt_tokenizer.h"
#include "bench/loadgen/openai_client.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/workload.h"
#include "common/credentials.h"

#ifndef TPSERVE_BENCH_CORPUS_DIR
#define TPSERVE_BENCH_CORPUS_DIR "data/tokenizer-corpus"
#endif

ABSL_FLAG(std::string, api, "grpc", "grpc (tpserve's gRPC API at --server) or openai (an OpenAI-compatible "
          "HTTP server at --url: tpserve --http-port, vLLM, TGI, ...)");
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "--api grpc: tpserve address HOST:PORT");
ABSL_FLAG(std::string, tls_ca, "", "connect with TLS, verifying the server against this CA bundle (PEM); "
          "--api openai: for an https:// --url (system roots when empty)");
ABSL_FLAG(std::string, api_key_file, "", "file holding the API key, sent as 'authorization: Bearer <key>' "
          "(gRPC metadata or HTTP header)");
ABSL_FLAG(std::string, url, "", "--api openai: the server's base URL, http(s)://HOST:PORT (a trailing /v1 is fine)");
ABSL_FLAG(std::string, endpoint, "completions", "--api openai: completions (/v1/completions; synthetic prompts go "
          "as token ids, exactly as over gRPC) or chat (/v1/chat/completions; prompts go as message text)");
ABSL_FLAG(std::string, model, "", "--api openai: the request's model field (default: the first of GET /v1/models)");
ABSL_FLAG(std::string, tokenizer, "", "--api openai: directory with the served model's tokenizer.model (e.g. the "
          "model directory), to build synthetic prompts; not needed with --dataset");
ABSL_FLAG(int, concurrency, 0,
          "closed loop: requests in flight (0 = 1); with --request-rate: the most in flight (0 = no cap)");
ABSL_FLAG(double, request_rate, 0, "open loop: requests per second (0 = closed loop)");
ABSL_FLAG(std::string, arrival, "poisson", "open-loop arrivals: poisson (gamma, see --burstiness) or constant");
ABSL_FLAG(double, burstiness, 1.0, "gamma shape of Poisson inter-arrivals: 1 = Poisson, <1 burstier, >1 smoother");
ABSL_FLAG(int, num_requests, 0, "requests to measure (0 = 100, or unlimited with --duration)");
ABSL_FLAG(double, duration, 0, "seconds to keep sending (0 = until --num-requests)");
ABSL_FLAG(int, warmup_requests, 0, "requests sent first and left out of every figure");
ABSL_FLAG(uint64_t, seed, 0, "seed for lengths, prompts and arrivals");
ABSL_FLAG(int, input_len, 128, "synthetic prompt tokens, BOS included (mean for --len-dist)");
ABSL_FLAG(int, output_len, 128, "tokens to generate (max_new_tokens, ignore_eos) (mean for --len-dist)");
ABSL_FLAG(std::string, len_dist, "fixed", "input/output length distribution: fixed, uniform or normal");
ABSL_FLAG(double, len_range, 0.0, "uniform: lengths in [len*(1-r), len*(1+r)], r in [0, 1)");
ABSL_FLAG(double, len_std, 0.0, "normal: standard deviation in tokens (0 = len/4)");
ABSL_FLAG(std::string, dataset, "", "JSONL: {\"prompt\": ...} or {\"messages\": [...]}, optional \"output_len\"; "
          "or `grounded`: the built-in workload whose answers copy spans of a long input (extraction, repetition, "
          "code edit; documents of about --input-len tokens from --corpus-dir; for a real model, docs/BENCHMARKS.md)");
ABSL_FLAG(std::string, corpus_dir, TPSERVE_BENCH_CORPUS_DIR, "*.txt files synthetic prompts are cut from");
ABSL_FLAG(int, prefix_len, 0, "shared-prefix workload: tokens of shared system prefix per prompt");
ABSL_FLAG(int, num_prefixes, 1, "shared-prefix workload: distinct prefixes");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0 = greedy)");
ABSL_FLAG(bool, ignore_eos, true, "generate exactly the output length (false: EOS may end requests early; for "
          "OpenAI-compatible servers that refuse the ignore_eos field)");
ABSL_FLAG(double, slo_ttft_ms, 0, "goodput: TTFT objective in ms (0 = none)");
ABSL_FLAG(double, slo_tpot_ms, 0, "goodput: TPOT objective in ms (0 = none)");
ABSL_FLAG(double, timeout, 600, "per-request deadline in seconds");
ABSL_FLAG(std::string, json, "", "write the full report (summary, timeline, per-request rows) here");
ABSL_FLAG(std::string, compare, "", "an older --json report: print deltas of the headline figures");

namespace {

namespace bench = tpserve::bench;
namespace v1 = tpserve::v1;

std::atomic<bool> g_stop{false};

void OnSigint(int) { g_stop.store(true); }

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// Redraws one line on stderr until `done`; only started on a TTY.
void ProgressLoop(const bench::RunProgress* p, int total, const std::atomic<bool>* done) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!done->load()) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int fin = p->finished.load();
    const int width = 30;
    const int fill = total > 0 ? std::min(width, fin * width / total) : 0;
    std::fprintf(stderr, "\r[%s%s] %d%s done, %d in flight, %.0f tok/s, %.0fs ", std::string(fill, '#').c_str(),
                 std::string(width - fill, ' ').c_str(), fin, total > 0 ? absl::StrCat("/", total).c_str() : "",
                 p->in_flight.load(), el > 0 ? p->tokens.load() / el : 0.0, el);
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::fprintf(stderr, "\r%s\r", std::string(90, ' ').c_str());
}

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--compare '", path, "' cannot be opened"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat("--compare '", path, "' is not JSON"));
  return j;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "tpserve-bench: %s\n", std::string(s.message()).c_str());
  return 1;
}

// The flags of the API not chosen must not be given: they would do nothing.
absl::Status CheckApiFlags(const std::string& api) {
  const std::vector<std::string> grpc_only = {"server"};
  const std::vector<std::string> openai_only = {"url", "endpoint", "model", "tokenizer"};
  for (const std::string& name : api == "grpc" ? openai_only : grpc_only) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(name);
    if (f != nullptr && f->CurrentValue() != f->DefaultValue()) {
      std::string dashed = name;
      std::replace(dashed.begin(), dashed.end(), '_', '-');
      return absl::InvalidArgumentError(
          absl::StrCat("--", dashed, " is for --api ", api == "grpc" ? "openai" : "grpc", ", not --api ", api));
    }
  }
  return absl::OkStatus();
}

// What a run needs from the API it speaks: who sends requests, who tokenizes prompts, what the report says.
struct Target {
  std::unique_ptr<bench::GrpcTarget> grpc;
  std::unique_ptr<bench::LocalPromptTokenizer> local_tokenizer;
  std::unique_ptr<bench::LoadClient> client;
  bench::PromptTokenizer* tokenizer = nullptr;  // null: dataset only, lengths left to the server
  std::string model;
  bench::OpenAiEndpoint endpoint = bench::OpenAiEndpoint::kCompletions;
  nlohmann::json config;  // api, server, model
};

absl::StatusOr<Target> ConnectGrpc(const std::string& api_key) {
  Target t;
  const std::string server = absl::GetFlag(FLAGS_server);
  auto grpc = bench::GrpcTarget::Connect({server, absl::GetFlag(FLAGS_tls_ca), api_key});
  if (!grpc.ok()) return grpc.status();
  t.grpc = std::move(*grpc);
  t.client = std::make_unique<bench::GrpcLoadClient>(t.grpc.get());
  t.tokenizer = t.grpc.get();
  const v1::ModelInfo& info = t.grpc->info();
  t.config = {{"api", "grpc"},
              {"server", server},
              {"model", {{"name", info.model_name()},
                         {"tensor_parallel_size", info.tensor_parallel_size()},
                         {"dtype", info.dtype()},
                         {"device", info.device()},
                         {"max_context_length", info.max_context_length()}}}};
  return t;
}

absl::StatusOr<Target> ConnectOpenAi(const std::string& api_key) {
  Target t;
  const std::string url = absl::GetFlag(FLAGS_url);
  if (url.empty()) return absl::InvalidArgumentError("--api openai needs --url http://HOST:PORT");
  auto endpoint = bench::ParseOpenAiEndpoint(absl::GetFlag(FLAGS_endpoint));
  if (!endpoint.ok()) return endpoint.status();
  t.endpoint = *endpoint;
  auto client = bench::OpenAiClient::Create({url, *endpoint, api_key, absl::GetFlag(FLAGS_tls_ca)});
  if (!client.ok()) return client.status();
  // Fail fast (and readably) when nothing listens there; waits briefly for a server still starting.
  auto models = (*client)->ListModels(absl::Seconds(20));
  if (!models.ok()) return models.status();
  t.model = absl::GetFlag(FLAGS_model);
  int max_context = 0;
  bool listed = false;
  std::string names;
  for (const auto& m : *models) {
    if (t.model.empty()) t.model = m.id;
    if (m.id == t.model) {
      listed = true;
      max_context = m.max_model_len;
    }
    absl::StrAppend(&names, names.empty() ? "" : ", ", m.id);
  }
  if (t.model.empty()) return absl::InvalidArgumentError("GET /v1/models lists no model: give --model NAME");
  // Every request would be refused (404 model_not_found): say so once, before the run.
  if (!listed && !models->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model '", t.model, "' is not served at ", url, " (GET /v1/models lists: ", names, ")"));
  }
  if (const std::string dir = absl::GetFlag(FLAGS_tokenizer); !dir.empty()) {
    auto tok = bench::LocalPromptTokenizer::Load(dir, max_context);
    if (!tok.ok()) return tok.status();
    t.local_tokenizer = std::move(*tok);
    t.tokenizer = t.local_tokenizer.get();
    max_context = t.local_tokenizer->max_context();
  } else if (absl::GetFlag(FLAGS_dataset).empty()) {
    return absl::InvalidArgumentError(
        "--api openai builds synthetic prompts with the served model's tokenizer: give --tokenizer DIR (a "
        "directory with its tokenizer.model, e.g. the model directory), or use --dataset");
  }
  t.client = std::move(*client);
  t.config = {{"api", "openai"},
              {"server", url},
              {"endpoint", absl::GetFlag(FLAGS_endpoint)},
              {"model", {{"name", t.model}, {"max_context_length", max_context}}}};
  return t;
}

int Run() {
  const std::string api = absl::GetFlag(FLAGS_api);
  if (api != "grpc" && api != "openai") {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--api must be grpc or openai, got '", api, "'")));
  }
  if (auto s = CheckApiFlags(api); !s.ok()) return Fail(s);
  std::string api_key;
  if (const std::string path = absl::GetFlag(FLAGS_api_key_file); !path.empty()) {
    auto key = tpserve::ReadSmallFile(path, "--api-key-file");
    if (!key.ok()) return Fail(key.status());
    api_key = std::string(absl::StripAsciiWhitespace(*key));
  }
  absl::StatusOr<Target> target = api == "grpc" ? ConnectGrpc(api_key) : ConnectOpenAi(api_key);
  if (!target.ok()) return Fail(target.status());

  auto len_dist = bench::ParseLenDist(absl::GetFlag(FLAGS_len_dist));
  if (!len_dist.ok()) return Fail(len_dist.status());
  auto arrival = bench::ParseArrival(absl::GetFlag(FLAGS_arrival));
  if (!arrival.ok()) return Fail(arrival.status());
  const int warmup = absl::GetFlag(FLAGS_warmup_requests);
  const double duration = absl::GetFlag(FLAGS_duration);
  int num_requests = absl::GetFlag(FLAGS_num_requests);
  if (num_requests < 0 || warmup < 0 || duration < 0) {
    return Fail(absl::InvalidArgumentError("--num-requests, --warmup-requests and --duration must be >= 0"));
  }
  if (num_requests == 0 && duration == 0) num_requests = 100;

  bench::WorkloadOptions w;
  w.input = {absl::GetFlag(FLAGS_input_len), *len_dist, absl::GetFlag(FLAGS_len_range), absl::GetFlag(FLAGS_len_std)};
  w.output = w.input;
  w.output.mean = absl::GetFlag(FLAGS_output_len);
  w.corpus_dir = absl::GetFlag(FLAGS_corpus_dir);
  w.dataset = absl::GetFlag(FLAGS_dataset);
  w.prefix_len = absl::GetFlag(FLAGS_prefix_len);
  w.num_prefixes = absl::GetFlag(FLAGS_num_prefixes);
  w.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  w.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  w.seed = absl::GetFlag(FLAGS_seed);
  // Warmup requests get their own prompts so they do not warm the prefix cache for the measured ones.
  const int pool = num_requests > 0 ? num_requests : 1024;
  auto specs = bench::BuildWorkload(w, warmup + pool, target->tokenizer);
  if (!specs.ok()) return Fail(specs.status());
  if (api == "openai") {
    bench::DecodeFn decode;
    if (target->local_tokenizer != nullptr) {
      const bench::LocalPromptTokenizer* tok = target->local_tokenizer.get();
      decode = [tok](absl::Span<const int32_t> ids) { return tok->Decode(ids); };
    }
    if (auto s = bench::PrepareOpenAiBodies(&*specs, target->endpoint, target->model, decode); !s.ok()) {
      return Fail(s);
    }
  }
  std::vector<bench::RequestSpec> warm(specs->begin(), specs->begin() + warmup);
  std::vector<bench::RequestSpec> measured(specs->begin() + warmup, specs->end());

  struct sigaction sa {};
  sa.sa_handler = OnSigint;
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C kills the tool outright
  sigaction(SIGINT, &sa, nullptr);

  bench::RunOptions ro;
  ro.request_rate = absl::GetFlag(FLAGS_request_rate);
  ro.concurrency = absl::GetFlag(FLAGS_concurrency);
  if (ro.concurrency < 0) return Fail(absl::InvalidArgumentError("--concurrency must be >= 0"));
  if (ro.concurrency == 0 && !(ro.request_rate > 0)) ro.concurrency = 1;
  ro.arrival = *arrival;
  ro.burstiness = absl::GetFlag(FLAGS_burstiness);
  ro.timeout_s = absl::GetFlag(FLAGS_timeout);
  ro.seed = w.seed;
  ro.stop = &g_stop;
  if (ro.request_rate < 0) return Fail(absl::InvalidArgumentError("--request-rate must be >= 0"));
  if (warmup > 0) {
    bench::RunOptions wo = ro;
    wo.request_rate = 0;
    wo.concurrency = std::max(1, ro.concurrency);
    wo.num_requests = warmup;
    wo.duration_s = 0;
    auto wr = bench::RunLoad(target->client.get(), warm, wo, nullptr);
    if (!wr.ok()) return Fail(wr.status());
    int bad = 0;
    for (const auto& r : wr->records) bad += r.ok() ? 0 : 1;
    if (bad > 0) std::fprintf(stderr, "tpserve-bench: %d of %d warmup requests failed\n", bad, warmup);
  }
  ro.num_requests = num_requests;
  ro.duration_s = duration;

  bench::RunProgress progress;
  std::atomic<bool> progress_done{false};
  std::thread progress_thread;
  if (isatty(STDERR_FILENO)) progress_thread = std::thread(ProgressLoop, &progress, num_requests, &progress_done);
  const double cpu0 = CpuSeconds();
  const absl::Time started = absl::Now();
  absl::StatusOr<bench::RunResult> run =
      g_stop.load() ? absl::StatusOr<bench::RunResult>(bench::RunResult{{}, 0, 0, true})
                    : bench::RunLoad(target->client.get(), measured, ro, &progress);
  const double cpu = CpuSeconds() - cpu0;
  progress_done.store(true);
  if (progress_thread.joinable()) progress_thread.join();
  if (!run.ok()) return Fail(run.status());

  bench::ReportOptions rep;
  rep.slo_ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);
  rep.slo_tpot_ms = absl::GetFlag(FLAGS_slo_tpot_ms);
  rep.config = target->config;
  rep.config.update({{"date", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", started, absl::UTCTimeZone())},
                {"concurrency", ro.concurrency},
                {"request_rate", ro.request_rate},
                {"arrival", absl::GetFlag(FLAGS_arrival)},
                {"burstiness", ro.burstiness},
                {"num_requests", num_requests},
                {"duration_s", duration},
                {"warmup_requests", warmup},
                {"seed", w.seed},
                {"input_len", w.input.mean},
                {"output_len", w.output.mean},
                {"len_dist", absl::GetFlag(FLAGS_len_dist)},
                {"len_range", w.input.range},
                {"len_std", w.input.std_tokens},
                {"dataset", w.dataset},
                {"prefix_len", w.prefix_len},
                {"num_prefixes", w.num_prefixes},
                {"temperature", w.temperature},
                {"ignore_eos", w.ignore_eos}});
  nlohmann::json report = bench::BuildReport(*run, rep);
  const int64_t streamed = report["client_overhead"]["streamed_tokens"].get<int64_t>();
  report["client_overhead"]["process_cpu_s"] = cpu;
  report["client_overhead"]["process_cpu_us_per_token"] = streamed > 0 ? cpu * 1e6 / streamed : 0.0;

  std::fputs(bench::FormatTable(report).c_str(), stdout);
  int rc = run->interrupted ? 130 : 0;
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    std::ofstream out(path);
    out << report.dump(2) << "\n";
    if (!out) rc = Fail(absl::InvalidArgumentError(absl::StrCat("--json '", path, "' could not be written")));
  }
  if (const std::string path = absl::GetFlag(FLAGS_compare); !path.empty()) {
    auto old = ReadJson(path);
    if (!old.ok()) return Fail(old.status());
    auto table = bench::FormatComparison(*old, report);
    if (!table.ok()) return Fail(table.status());
    std::printf("\nCompared with %s:\n%s", path.c_str(), table->c_str());
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // Flags are spelled with dashes (--max-concurrency); absl names them with underscores. Normalise the name
  // part of every --flag[=value], as cli/main.cc does, so both spellings work.
  std::vector<std::string> storage;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      const size_t eq = a.find('=');
      std::replace(a.begin() + 2, eq == std::string::npos ? a.end() : a.begin() + eq, '-', '_');
    }
    storage.push_back(std::move(a));
  }
  std::vector<char*> args{argv[0]};
  for (auto& a : storage) args.push_back(a.data());
  absl::SetProgramUsageMessage(
      "tpserve-bench [--server HOST:PORT | --api openai --url http://HOST:PORT] [flags]: load generator for tpserve "
      "and OpenAI-compatible servers");
  // --help lists this tool's own flags (absl matches flag files against the program name by default).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return file.find("bench/") != absl::string_view::npos;
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) {
    std::fprintf(stderr, "tpserve-bench: unexpected argument '%s' (flags look like --name=value)\n", positional[1]);
    return 2;
  }
  return Run();
}
