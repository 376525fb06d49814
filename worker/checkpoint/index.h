// The *.index.json of a sharded checkpoint: {"metadata": {...}, "weight_map": {tensor: shard file}}.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tpserve::checkpoint {

struct ShardIndex {
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file name (in the same dir)
  std::vector<std::string> shards;                // distinct shard names, sorted
};

// PATH only names the file in messages. Shard names must be plain file names (no '/', not "." / "..").
absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view json_text, const std::string& path);
absl::StatusOr<ShardIndex> LoadShardIndex(const std::string& path);

}  // namespace tpserve::checkpoint
