// Flags are spelled with dashes on every tpserve command line (--batch-sizes); absl names them with
// underscores. ParseDashedCommandLine normalises the names (not the values), then parses as absl does.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "absl/flags/parse.h"

namespace tpserve::bench {

inline std::vector<char*> ParseDashedCommandLine(int argc, char** argv) {
  static std::vector<std::string> args;  // keeps the storage the returned pointers refer to
  args.assign(argv, argv + argc);
  std::vector<char*> argp;
  for (std::string& a : args) {
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      const size_t eq = a.find('=');
      std::replace(a.begin() + 2, eq == std::string::npos ? a.end() : a.begin() + eq, '-', '_');
    }
    argp.push_back(a.data());
  }
  return absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
}

}  // namespace tpserve::bench
