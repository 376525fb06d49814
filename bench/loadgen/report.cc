// Implementation of bench/loadgen/report.h.
#include "bench/loadgen/report.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tpserve::bench {
namespace {

const char* CodeName(int code) {
  static const char* kNames[] = {"OK",           "CANCELLED",        "UNKNOWN",           "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND",   "ALREADY_EXISTS",    "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
                                 "UNIMPLEMENTED", "INTERNAL",        "UNAVAILABLE",       "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code < 17 ? kNames[code] : "UNKNOWN";
}

// The failure's name in the report: an HTTP status when the OpenAI API answered one, else the gRPC code.
std::string StatusName(const RequestRecord& r) {
  return r.http_status != 0 ? absl::StrCat("HTTP ", r.http_status) : CodeName(r.status_code);
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double pos = p / 100.0 * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// Headline figures for comparisons: (json pointer, label, higher is better).
struct Headline {
  const char* pointer;
  const char* label;
  bool higher_better;
};
const Headline kHeadlines[] = {
    {"/summary/request_throughput", "Request throughput (req/s)", true},
    {"/summary/output_token_throughput", "Output token throughput (tok/s)", true},
    {"/summary/input_token_throughput", "Input token throughput (tok/s)", true},
    {"/summary/goodput", "Goodput (req/s)", true},
    {"/ttft_ms/mean", "Mean TTFT (ms)", false},
    {"/ttft_ms/p50", "Median TTFT (ms)", false},
    {"/ttft_ms/p99", "P99 TTFT (ms)", false},
    {"/tpot_ms/mean", "Mean TPOT (ms)", false},
    {"/tpot_ms/p99", "P99 TPOT (ms)", false},
    {"/itl_ms/mean", "Mean ITL (ms)", false},
    {"/itl_ms/p99", "P99 ITL (ms)", false},
    {"/e2e_ms/mean", "Mean E2E (ms)", false},
    {"/e2e_ms/p99", "P99 E2E (ms)", false},
};

}  // namespace

nlohmann::json Distribution(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  nlohmann::json j;
  j["count"] = v.size();
  j["mean"] = v.empty() ? 0.0 : sum / v.size();
  j["median"] = Percentile(v, 50);
  j["p50"] = Percentile(v, 50);
  j["p90"] = Percentile(v, 90);
  j["p95"] = Percentile(v, 95);
  j["p99"] = Percentile(v, 99);
  j["max"] = v.empty() ? 0.0 : v.back();
  return j;
}

nlohmann::json BuildReport(const RunResult& run, const ReportOptions& options) {
  std::vector<double> ttft, tpot, itl, e2e;
  std::map<std::string, int> failed_by_code;
  int completed = 0, good = 0;
  int64_t input_tokens = 0, output_tokens = 0, stream_tokens = 0, cached = 0, all_stream_tokens = 0;
  double callback_s = 0;
  const int seconds = std::max(1, static_cast<int>(std::ceil(run.duration_s)));
  std::vector<int> started(seconds + 1, 0), finished(seconds + 1, 0);
  std::vector<int64_t> tokens_out(seconds + 1, 0);
  auto bucket = [&](double t) { return std::clamp(static_cast<int>(t), 0, seconds); };
  nlohmann::json requests = nlohmann::json::array();

  for (const RequestRecord& r : run.records) {
    callback_s += r.callback_s;
    all_stream_tokens += r.stream_tokens;
    started[bucket(r.start_s)]++;
    finished[bucket(r.end_s)]++;
    for (size_t c = 0; c < r.chunk_s.size(); ++c) tokens_out[bucket(r.chunk_s[c])] += r.chunk_tokens[c];
    nlohmann::json row = {{"index", r.index},
                          {"start_s", r.start_s},
                          {"status", StatusName(r)},
                          {"prompt_tokens", r.prompt_tokens},
                          {"completion_tokens", r.completion_tokens},
                          {"cached_prompt_tokens", r.cached_prompt_tokens},
                          {"stream_tokens", r.stream_tokens},
                          {"stream_prompt_ids", r.stream_prompt_ids},
                          {"output_len_asked", r.output_len_asked},
                          {"finish_reason", r.finish_reason}};
    if (r.input_len_sent >= 0) row["input_len_sent"] = r.input_len_sent;
    if (r.prefix_id >= 0) row["prefix_id"] = r.prefix_id;
    if (!r.ok()) {
      failed_by_code[StatusName(r)]++;
      row["error"] = r.error;
      requests.push_back(std::move(row));
      continue;
    }
    ++completed;
    input_tokens += r.prompt_tokens;
    output_tokens += r.completion_tokens;
    stream_tokens += r.stream_tokens;
    cached += r.cached_prompt_tokens;
    const double e2e_ms = (r.end_s - r.start_s) * 1e3;
    const double ttft_ms = r.first_token_s >= 0 ? (r.first_token_s - r.start_s) * 1e3 : e2e_ms;
    ttft.push_back(ttft_ms);
    e2e.push_back(e2e_ms);
    row["ttft_ms"] = ttft_ms;
    row["e2e_ms"] = e2e_ms;
    double tpot_ms = 0;
    if (r.completion_tokens > 1) {
      tpot_ms = (e2e_ms - ttft_ms) / (r.completion_tokens - 1);
      tpot.push_back(tpot_ms);
      row["tpot_ms"] = tpot_ms;
    }
    for (size_t c = 1; c < r.chunk_s.size(); ++c) itl.push_back((r.chunk_s[c] - r.chunk_s[c - 1]) * 1e3);
    const bool ttft_ok = options.slo_ttft_ms <= 0 || ttft_ms <= options.slo_ttft_ms;
    const bool tpot_ok = options.slo_tpot_ms <= 0 || tpot_ms <= options.slo_tpot_ms;
    if (ttft_ok && tpot_ok) ++good;
    requests.push_back(std::move(row));
  }

  const double d = run.duration_s > 0 ? run.duration_s : 1e-9;
  nlohmann::json report;
  report["tool"] = "tpserve-bench";
  report["config"] = options.config;
  auto& s = report["summary"];
  s["completed"] = completed;
  s["failed"] = static_cast<int>(run.records.size()) - completed;
  s["failed_by_code"] = failed_by_code;
  s["interrupted"] = run.interrupted;
  s["peak_concurrency"] = run.peak_concurrency;
  s["duration_s"] = run.duration_s;
  s["total_input_tokens"] = input_tokens;
  s["total_output_tokens"] = output_tokens;
  s["stream_output_tokens"] = stream_tokens;
  s["cached_prompt_tokens"] = cached;
  s["request_throughput"] = completed / d;
  s["input_token_throughput"] = input_tokens / d;
  s["output_token_throughput"] = output_tokens / d;
  s["total_token_throughput"] = (input_tokens + output_tokens) / d;
  s["good_requests"] = good;
  s["goodput"] = good / d;
  s["slo_ttft_ms"] = options.slo_ttft_ms;
  s["slo_tpot_ms"] = options.slo_tpot_ms;
  report["ttft_ms"] = Distribution(ttft);
  report["tpot_ms"] = Distribution(tpot);
  report["itl_ms"] = Distribution(itl);
  report["e2e_ms"] = Distribution(e2e);
  report["client_overhead"] = {
      {"callback_s", callback_s},
      {"streamed_tokens", all_stream_tokens},
      {"callback_us_per_token", all_stream_tokens > 0 ? callback_s * 1e6 / all_stream_tokens : 0.0}};
  nlohmann::json timeline = nlohmann::json::array();
  for (int i = 0; i <= seconds; ++i) {
    if (i == seconds && started[i] == 0 && finished[i] == 0 && tokens_out[i] == 0) break;
    timeline.push_back({{"second", i},
                        {"requests_started", started[i]},
                        {"requests_finished", finished[i]},
                        {"output_tokens", tokens_out[i]}});
  }
  report["timeline"] = std::move(timeline);
  report["requests"] = std::move(requests);
  return report;
}

std::string FormatTable(const nlohmann::json& r) {
  const auto& s = r["summary"];
  std::string out;
  auto line = [&](const std::string& label, const std::string& value) {
    absl::StrAppendFormat(&out, "%-40s %14s\n", label, value);
  };
  auto num = [](double v, int prec = 2) { return absl::StrFormat("%.*f", prec, v); };
  auto title = [&](const std::string& t) {
    const int pad = std::max(0, 55 - static_cast<int>(t.size()) - 2);
    absl::StrAppend(&out, std::string(pad / 2, '-'), " ", t, " ", std::string(pad - pad / 2, '-'), "\n");
  };
  out += "=============== tpserve-bench result ==================\n";
  line("Successful requests:", absl::StrCat(s["completed"].get<int>()));
  line("Failed requests:", absl::StrCat(s["failed"].get<int>()));
  for (const auto& [code, n] : s["failed_by_code"].items()) line(absl::StrCat("  ", code, ":"), absl::StrCat(n.get<int>()));
  if (s["interrupted"].get<bool>()) line("Interrupted (SIGINT):", "yes");
  line("Peak concurrency:", absl::StrCat(s["peak_concurrency"].get<int>()));
  line("Benchmark duration (s):", num(s["duration_s"]));
  line("Total input tokens:", absl::StrCat(s["total_input_tokens"].get<int64_t>()));
  line("Total generated tokens:", absl::StrCat(s["total_output_tokens"].get<int64_t>()));
  line("Cached prompt tokens (prefix cache):", absl::StrCat(s["cached_prompt_tokens"].get<int64_t>()));
  line("Request throughput (req/s):", num(s["request_throughput"]));
  line("Input token throughput (tok/s):", num(s["input_token_throughput"]));
  line("Output token throughput (tok/s):", num(s["output_token_throughput"]));
  if (s["slo_ttft_ms"].get<double>() > 0 || s["slo_tpot_ms"].get<double>() > 0) {
    line("Goodput (req/s):", num(s["goodput"]));
  }
  for (const auto& [key, name] : std::vector<std::pair<std::string, std::string>>{
           {"ttft_ms", "Time to First Token"}, {"tpot_ms", "Time per Output Token (excl. 1st token)"},
           {"itl_ms", "Inter-token Latency"}, {"e2e_ms", "End-to-end Latency"}}) {
    title(name);
    const auto& d = r[key];
    std::string shortname = key.substr(0, key.find('_'));
    for (auto& c : shortname) c = static_cast<char>(toupper(c));
    for (const char* stat : {"mean", "median", "p90", "p95", "p99", "max"}) {
      std::string label = std::string(stat) == "mean" ? "Mean" : std::string(stat) == "median" ? "Median"
                          : std::string(stat) == "max" ? "Max" : absl::StrCat("P", std::string(stat).substr(1));
      line(absl::StrCat(label, " ", shortname, " (ms):"), num(d[stat]));
    }
  }
  title("Client overhead");
  line("Callback time per streamed token (us):", num(r["client_overhead"]["callback_us_per_token"], 3));
  if (r["client_overhead"].contains("process_cpu_us_per_token")) {
    line("Process CPU per streamed token (us):", num(r["client_overhead"]["process_cpu_us_per_token"], 3));
  }
  out += "=======================================================\n";
  return out;
}

absl::StatusOr<std::string> FormatComparison(const nlohmann::json& old_r, const nlohmann::json& r) {
  std::string out = absl::StrFormat("%-34s %12s %12s %12s %9s\n", "Metric", "old", "new", "delta", "change");
  for (const Headline& h : kHeadlines) {
    const nlohmann::json::json_pointer p(h.pointer);
    if (!old_r.contains(p) || !old_r[p].is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--compare file is not a tpserve-bench report: it has no numeric ", h.pointer));
    }
    const double a = old_r[p].get<double>(), b = r[p].get<double>();
    const double delta = b - a;
    std::string pct = a != 0 ? absl::StrFormat("%+.1f%%", 100.0 * delta / std::fabs(a)) : "n/a";
    const bool better = h.higher_better ? delta > 0 : delta < 0;
    const char* mark = delta == 0 ? "" : better ? " better" : " worse";
    absl::StrAppendFormat(&out, "%-34s %12.2f %12.2f %+12.2f %9s%s\n", h.label, a, b, delta, pct, mark);
  }
  return out;
}

}  // namespace tpserve::bench
