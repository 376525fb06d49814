// Where tests find shared data, built binaries and scratch space.
#pragma once

#include <filesystem>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tpserve::testing {

// ../shared (models, references). Empty when absent.
std::string SharedDir();
// "<shared>/<rel>" or "" when ../shared or the path is absent.
std::string SharedPath(const std::string& rel);
std::string BinDir();     // build/bin, or $TPSERVE_BIN_DIR
// `d` times $TPSERVE_TEST_TIMEOUT_SCALE (default 1). The sanitizer stages set it (scripts/asan-tests.sh,
// tsan-tests.sh): their servers run several times slower, and a wait's limit only decides when a test gives up
// on something that should happen, never what it asserts.
absl::Duration ScaledTimeout(absl::Duration d);
std::string SourceDir();  // repository root
// A fresh directory under $TMPDIR, removed by the caller or at exit.
std::string MakeTempDir(const std::string& tag);
std::string ReadFileOrDie(const std::string& path);
// The first `n` greedy ids for `prompt` in ../shared/reference/<reference> (e.g. "stories260K.json"); empty when
// the file or the prompt is absent or holds fewer ids. Golden ids come from there, never pasted into a test.
std::vector<int32_t> ReferenceGreedyIds(const std::string& reference, const std::string& prompt, size_t n);

// A MakeTempDir directory removed, with everything in it, when the object goes out of scope.
struct ScopedTempDir {
  explicit ScopedTempDir(const std::string& tag) : path(MakeTempDir(tag)) {}
  ~ScopedTempDir() { std::filesystem::remove_all(path); }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  std::string path;
};

}  // namespace tpserve::testing

// Skips the current test with a message when a ../shared path is missing.
#define TP_REQUIRE_SHARED(var, rel)                                                   \
  std::string var = ::tpserve::testing::SharedPath(rel);                              \
  if (var.empty()) GTEST_SKIP() << "../shared/" << (rel) << " is absent; skipping"
