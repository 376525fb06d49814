// Turns a load run's per-request records into the benchmark report: latency percentiles, throughput,
// goodput, a per-second timeline and per-request rows (JSON), a text table, and deltas against an older JSON.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/loadgen/load_runner.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {

struct ReportOptions {
  double slo_ttft_ms = 0;  // 0 = no TTFT objective
  double slo_tpot_ms = 0;  // 0 = no TPOT objective
  nlohmann::json config;   // echoed under "config" (flags, server, model)
};

// Mean, median (= p50), p90, p95, p99 and max of `v` (linear interpolation between order statistics, like
// numpy.percentile); all zero for an empty input, with "count" saying so.
nlohmann::json Distribution(std::vector<double> v);

// The whole report. Latencies in milliseconds, throughputs per second of the run's duration.
// Keys: config, summary, ttft_ms, tpot_ms, itl_ms, e2e_ms, client_overhead, timeline, requests.
nlohmann::json BuildReport(const RunResult& run, const ReportOptions& options);

// Human-readable table of the report's headline figures.
std::string FormatTable(const nlohmann::json& report);

// Table of old -> new for the headline figures with absolute and relative change; INVALID_ARGUMENT when
// `old_report` is not a tpserve-bench report (naming the missing key).
absl::StatusOr<std::string> FormatComparison(const nlohmann::json& old_report, const nlohmann::json& report);

}  // namespace tpserve::bench
