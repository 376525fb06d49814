// Runs the tpserve-bench binary as a subprocess, as a user would, and reads back its JSON report.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace tpserve::testing {

struct BenchRun {
  int exit_code = -1;
  std::string output;   // stdout and stderr together
  nlohmann::json report;  // the --json report; discarded when none was written
};

// `build/bin/tpserve-bench <args> --json <temp file>`.
BenchRun RunTpserveBench(const std::string& args);

}  // namespace tpserve::testing
