// `tpserve make-model`: a random-weight Llama checkpoint in Hugging Face layout, with a SentencePiece tokenizer
// trained on the repository's corpus. Also the default model `tpserve serve` uses when given no --model.
#include <unistd.h>

#include <climits>
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/shared_flags.h"
#include "tools/tokenizer/train_tokenizer.h"
#include "tools/model/synthetic_model.h"

ABSL_FLAG(std::string, out, "", "output directory");
ABSL_FLAG(std::string, preset, "tiny", "tiny, bench-0.9b (bench/compare-llamacpp's 0.94B shape) or llama-2-13b");
ABSL_FLAG(int, num_layers, -1, "override the preset's layer count (e.g. 2 for a shortened 13B)");
ABSL_FLAG(std::string, weight_dtype, "bfloat16", "bfloat16, float16 or float32");
ABSL_FLAG(std::string, format, "safetensors", "safetensors, pytorch (zip .bin shards like the Tulu release) or both");
ABSL_FLAG(std::string, shard_size, "4GiB", "largest weight shard file");
ABSL_FLAG(std::string, corpus, "", "tokenizer training text folder (default: the bundled data/tokenizer-corpus)");

namespace tpserve::cli {

absl::StatusOr<int64_t> ParseBytes(const std::string& text);

std::string SelfExe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "tpserve";
  buf[n] = 0;
  return buf;
}

std::string DefaultModelDir() {
  std::string exe = SelfExe();
  std::string dir = exe.substr(0, exe.rfind('/'));
  return dir + "/../models/tiny-random";
}

namespace {

int MakeModel(const std::string& out, const std::string& preset, int num_layers, DType dtype, uint64_t seed,
              const std::string& format, int64_t shard_bytes, const std::string& corpus) {
  auto config = model::PresetConfig(preset);
  if (!config.ok()) {
    std::fprintf(stderr, "tpserve make-model: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  coordinator::TrainTokenizerOptions t;
  t.out_dir = out;
  t.vocab_size = config->vocab_size;
  t.corpus_dir = corpus;
  int trained_vocab = 0;
  absl::Status s = coordinator::TrainTokenizer(t, &trained_vocab);
  if (!s.ok()) {
    std::fprintf(stderr, "tpserve make-model: tokenizer: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  model::SyntheticModelOptions m;
  m.out_dir = out;
  m.preset = preset;
  m.num_layers = num_layers;
  m.dtype = dtype;
  m.seed = seed;
  m.write_safetensors = format == "safetensors" || format == "both";
  m.write_pytorch = format == "pytorch" || format == "both";
  m.max_shard_bytes = shard_bytes;
  m.vocab_size = std::max(trained_vocab, config->vocab_size);
  s = model::WriteSyntheticModel(m);
  if (!s.ok()) {
    std::fprintf(stderr, "tpserve make-model: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "tpserve make-model: wrote a random-weight %s model (%s, vocab %d, tokenizer vocab %d) to %s\n",
               preset.c_str(), DTypeName(dtype), m.vocab_size, trained_vocab, out.c_str());
  return 0;
}

}  // namespace

int EnsureDefaultModel(const std::string& dir) {
  if (access((dir + "/config.json").c_str(), R_OK) == 0 && access((dir + "/tokenizer.model").c_str(), R_OK) == 0) {
    return 0;
  }
  std::fprintf(stderr, "tpserve: generating the default random-weight model at %s\n", dir.c_str());
  return MakeModel(dir, "tiny", -1, DType::kBF16, 0, "safetensors", int64_t{4} << 30, "");
}

int MakeModelCommand() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "tpserve make-model: --out DIR is required\n");
    return 2;
  }
  auto dtype = ParseDType(absl::GetFlag(FLAGS_weight_dtype));
  if (!dtype.ok()) {
    std::fprintf(stderr, "tpserve make-model: --weight-dtype: %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  const std::string format = absl::GetFlag(FLAGS_format);
  if (format != "safetensors" && format != "pytorch" && format != "both") {
    std::fprintf(stderr, "tpserve make-model: --format must be safetensors, pytorch or both\n");
    return 2;
  }
  auto shard = ParseBytes(absl::GetFlag(FLAGS_shard_size));
  if (!shard.ok() || *shard <= 0) {
    std::fprintf(stderr, "tpserve make-model: --shard-size: expected a size like 4GiB\n");
    return 2;
  }
  return MakeModel(out, absl::GetFlag(FLAGS_preset), absl::GetFlag(FLAGS_num_layers), *dtype, static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_seed))),
                   format, *shard, absl::GetFlag(FLAGS_corpus));
}

}  // namespace tpserve::cli
