// libFuzzer target: a *.index.json through ParseShardIndex; every shard it accepts must be a plain file
// name in the same directory (the loader joins it to the model dir, so '/' or ".." would escape it).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "worker/checkpoint/index.h"

namespace {

void CheckPlain(const std::string& shard) {
  if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
      shard.find('\0') != std::string::npos) {
    std::fprintf(stderr, "ParseShardIndex accepted shard name '%s'\n", shard.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto index = tpserve::checkpoint::ParseShardIndex(absl::string_view(reinterpret_cast<const char*>(data), size),
                                                    "fuzz/model.safetensors.index.json");
  if (!index.ok()) return 0;
  for (const auto& [tensor, shard] : index->weight_map) {
    CheckPlain(shard);
    if (!std::binary_search(index->shards.begin(), index->shards.end(), shard)) {
      std::fprintf(stderr, "shard '%s' of tensor '%s' missing from shards\n", shard.c_str(), tensor.c_str());
      std::abort();
    }
  }
  for (const std::string& shard : index->shards) CheckPlain(shard);
  return 0;
}
