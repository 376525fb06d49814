// Implementation of tests/util/bench_run.h.
#include "tests/util/bench_run.h"

#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {

BenchRun RunTpserveBench(const std::string& args) {
  BenchRun r;
  const std::string json_path = MakeTempDir("bench") + "/report.json";
  const std::string cmd = absl::StrCat(BinDir(), "/tpserve-bench ", args, " --json ", json_path, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(json_path);
  if (in) r.report = nlohmann::json::parse(in, nullptr, false);
  return r;
}

}  // namespace tpserve::testing
