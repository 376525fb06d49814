// tpserve-bench: load generator for a running tpserve server. Streams requests over GenerateStream in a closed
// loop (--concurrency) or an open loop (--request-rate, Poisson/gamma or constant arrivals) and reports
// throughput, TTFT/TPOT/ITL/E2E percentiles, goodput, a per-second timeline and per-request rows.
//   tpserve-bench --server 127.0.0.1:50051 --num-requests 200 --concurrency 8 --input-len 128 --output-len 128
//   tpserve-bench --server ... --request-rate 20 --burstiness 0.5 --duration 60 --json run.json --compare old.json
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
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/workload.h"
#include "generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

#ifndef TPSERVE_BENCH_CORPUS_DIR
#define TPSERVE_BENCH_CORPUS_DIR "data/tokenizer-corpus"
#endif

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "tpserve address HOST:PORT");
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
ABSL_FLAG(std::string, dataset, "", "JSONL: {\"prompt\": ...} or {\"messages\": [...]}, optional \"output_len\"");
ABSL_FLAG(std::string, corpus_dir, TPSERVE_BENCH_CORPUS_DIR, "*.txt files synthetic prompts are cut from");
ABSL_FLAG(int, prefix_len, 0, "shared-prefix workload: tokens of shared system prefix per prompt");
ABSL_FLAG(int, num_prefixes, 1, "shared-prefix workload: distinct prefixes");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0 = greedy)");
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

int Run() {
  const std::string server = absl::GetFlag(FLAGS_server);
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);

  // Fail fast (and readably) when nothing listens there; waits briefly for a server still starting.
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) {
      return Fail(absl::UnavailableError(absl::StrCat("--server ", server, " did not answer GetModelInfo: ",
                                                      s.error_message())));
    }
  }

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
  w.seed = absl::GetFlag(FLAGS_seed);
  // Warmup requests get their own prompts so they do not warm the prefix cache for the measured ones.
  const int pool = num_requests > 0 ? num_requests : 1024;
  auto specs = bench::BuildWorkload(w, warmup + pool, stub.get());
  if (!specs.ok()) return Fail(specs.status());
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
    auto wr = bench::RunLoad(stub.get(), warm, wo, nullptr);
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
                    : bench::RunLoad(stub.get(), measured, ro, &progress);
  const double cpu = CpuSeconds() - cpu0;
  progress_done.store(true);
  if (progress_thread.joinable()) progress_thread.join();
  if (!run.ok()) return Fail(run.status());

  bench::ReportOptions rep;
  rep.slo_ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);
  rep.slo_tpot_ms = absl::GetFlag(FLAGS_slo_tpot_ms);
  rep.config = {{"server", server},
                {"date", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", started, absl::UTCTimeZone())},
                {"model", {{"name", info.model_name()},
                           {"tensor_parallel_size", info.tensor_parallel_size()},
                           {"dtype", info.dtype()},
                           {"device", info.device()},
                           {"max_context_length", info.max_context_length()}}},
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
                {"temperature", w.temperature}};
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
  absl::SetProgramUsageMessage("tpserve-bench --server HOST:PORT [flags]: load generator for tpserve");
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
