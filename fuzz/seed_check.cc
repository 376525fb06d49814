// seed_check TARGET FILE...: runs each seed through TARGET's parser and fails unless every one is accepted,
// so scripts/fuzz.sh notices when the generated seeds stop being valid inputs (and the fuzzers would start
// from rejected bytes only).
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "worker/checkpoint/index.h"
#include "worker/checkpoint/pickle_reader.h"
#include "worker/checkpoint/safetensors.h"
#include "worker/checkpoint/torch_checkpoint.h"

namespace {

absl::Status Check(const std::string& target, const std::string& path, const std::string& bytes) {
  using namespace tpserve;
  auto file = checkpoint::MappedFile::FromMemory(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  if (target == "safetensors") return checkpoint::ParseSafetensors(*file).status();
  if (target == "zip") return checkpoint::ParseTorchZip(*file).status();
  if (target == "pickle") return checkpoint::Unpickle(bytes, path).status();
  if (target == "shard_index") return checkpoint::ParseShardIndex(bytes, path).status();
  if (target == "model_config") return ParseModelConfig(bytes).status();
  if (target == "tokenizer_model") {  // Load takes a directory
    char dir[] = "/tmp/tpserve-seed-check-XXXXXX";
    if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
    const std::string model = std::string(dir) + "/tokenizer.model";
    std::ofstream(model, std::ios::binary) << bytes;
    absl::Status s = coordinator::Tokenizer::Load(dir).status();
    std::remove(model.c_str());
    ::rmdir(dir);
    return s;
  }
  if (target == "tokenizer_config") {
    coordinator::SpecialTokenNames names;
    return coordinator::ParseSpecialTokensJson(bytes, path, &names);
  }
  return absl::InvalidArgumentError("unknown target " + target);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: seed_check safetensors|zip|pickle|shard_index|model_config|tokenizer_config|tokenizer_model FILE...\n");
    return 2;
  }
  int bad = 0;
  for (int i = 2; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    absl::Status s = Check(argv[1], argv[i], ss.str());
    if (!s.ok()) {
      std::fprintf(stderr, "seed_check %s: %s rejected: %s\n", argv[1], argv[i], s.ToString().c_str());
      ++bad;
    }
  }
  return bad == 0 ? 0 : 1;
}
