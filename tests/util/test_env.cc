// Implementation of tests/util/test_env.h.
#include "tests/util/test_env.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "nlohmann/json.hpp"
#include "tests/util/build_paths.h"

namespace tpserve::testing {

static bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string SharedDir() {
  const char* env = std::getenv("TPSERVE_SHARED_DIR");
  std::string dir = env ? env : BuildSharedDir();
  return Exists(dir) ? dir : "";
}

std::string SharedPath(const std::string& rel) {
  std::string dir = SharedDir();
  if (dir.empty()) return "";
  std::string p = dir + "/" + rel;
  return Exists(p) ? p : "";
}

std::string BinDir() {
  const char* env = std::getenv("TPSERVE_BIN_DIR");  // another build's binaries (scripts/test.sh, CUDA stage)
  return env && *env ? env : BuildBinDir();
}

absl::Duration ScaledTimeout(absl::Duration d) {
  static const double scale = [] {
    const char* env = std::getenv("TPSERVE_TEST_TIMEOUT_SCALE");
    const double v = env ? std::atof(env) : 1.0;
    return v >= 1.0 ? v : 1.0;
  }();
  return d * scale;
}
std::string SourceDir() { return BuildSourceDir(); }

std::string MakeTempDir(const std::string& tag) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp ? tmp : "/tmp") + "/tpserve-" + tag + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> ReferenceGreedyIds(const std::string& reference, const std::string& prompt, size_t n) {
  const std::string path = SharedPath("reference/" + reference);
  if (path.empty()) return {};
  const nlohmann::json ref = nlohmann::json::parse(ReadFileOrDie(path));
  for (const auto& c : ref["cases"]) {
    if (c["prompt"].get<std::string>() != prompt) continue;
    std::vector<int32_t> ids = c["generated_ids"];
    if (ids.size() < n) return {};
    ids.resize(n);
    return ids;
  }
  return {};
}

}  // namespace tpserve::testing
