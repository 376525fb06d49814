// *.index.json parsing; the shards themselves are opened by checkpoint.cc.
#include "worker/checkpoint/index.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tpserve::checkpoint {

absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view json_text, const std::string& path) {
  using json = nlohmann::json;
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("index ", path, " is not a valid JSON object"));
  }
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object() || wm->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("index ", path, " has no 'weight_map' object mapping tensor names to shard files"));
  }
  ShardIndex index;
  std::set<std::string> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("index ", path, ": weight_map entry for '", it.key(), "' is not a file name string"));
    }
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("index ", path, ": tensor '", it.key(), "' names shard '",
                                                     shard, "', which is not a plain file name"));
    }
    index.weight_map.emplace(it.key(), shard);
    shards.insert(shard);
  }
  index.shards.assign(shards.begin(), shards.end());
  return index;
}

absl::StatusOr<ShardIndex> LoadShardIndex(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open index ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ParseShardIndex(ss.str(), path);
}

}  // namespace tpserve::checkpoint
