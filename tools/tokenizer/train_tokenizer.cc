// SentencePiece BPE training for synthetic models; see train_tokenizer.h.
#include "tools/tokenizer/train_tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "coordinator/tokenizer/chat_template.h"
#include "coordinator/tokenizer/sentencepiece_bridge.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator {
namespace fs = std::filesystem;
namespace {

// Three specials + 256 byte-fallback pieces; the trainer also needs one piece per kept corpus character.
constexpr int kMinVocabSize = 3 + 256;

bool IsDir(const std::string& path) {
  std::error_code ec;
  return !path.empty() && fs::is_directory(path, ec);
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string TokenizerConfigJson() {
  nlohmann::ordered_json config;
  config["add_bos_token"] = true;
  config["add_eos_token"] = false;
  config["bos_token"] = "<s>";
  config["eos_token"] = "</s>";
  config["unk_token"] = "<unk>";
  config["pad_token"] = nullptr;
  config["clean_up_tokenization_spaces"] = false;
  config["legacy"] = true;  // Llama 2 / Tulu behaviour: every text segment gets SentencePiece's dummy prefix
  config["sp_model_kwargs"] = nlohmann::ordered_json::object();
  config["tokenizer_class"] = "LlamaTokenizer";
  config["chat_template"] = std::string(kTuluChatTemplate);
  return config.dump(2) + "\n";
}

std::string SpecialTokensMapJson() {
  nlohmann::ordered_json map;
  map["bos_token"] = "<s>";
  map["eos_token"] = "</s>";
  map["unk_token"] = "<unk>";
  return map.dump(2) + "\n";
}

}  // namespace

std::string DefaultTokenizerCorpusDir() {
  std::vector<std::string> candidates;
  // The source tree this binary was built from (CMake passes its absolute path; __FILE__ is relative under
  // ccache's base_dir), then the copy the build places next to the binaries.
#ifdef TPSERVE_SOURCE_TREE
  candidates.push_back(std::string(TPSERVE_SOURCE_TREE) + "/data/tokenizer-corpus");
#endif
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back((exe.parent_path().parent_path() / "share/tpserve/tokenizer-corpus").string());
  for (const auto& c : candidates) {
    if (IsDir(c)) return c;
  }
  return "";
}

absl::Status TrainTokenizer(const TrainTokenizerOptions& options) {
  int unused = 0;
  return TrainTokenizer(options, &unused);
}

absl::Status TrainTokenizer(const TrainTokenizerOptions& options, int* vocab_size_out) {
  if (options.out_dir.empty()) return absl::InvalidArgumentError("TrainTokenizerOptions.out_dir is empty");
  if (options.vocab_size < kMinVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("TrainTokenizerOptions.vocab_size is ", options.vocab_size,
                                                   "; a byte-fallback tokenizer needs at least ", kMinVocabSize,
                                                   " (3 specials + 256 bytes) plus the corpus' characters"));
  }
  std::string corpus_dir = options.corpus_dir;
  if (corpus_dir.empty()) {
    corpus_dir = DefaultTokenizerCorpusDir();
    if (corpus_dir.empty()) {
      return absl::InvalidArgumentError(
          "no tokenizer training corpus found (neither <source>/data/tokenizer-corpus nor "
          "<prefix>/share/tpserve/tokenizer-corpus exists); pass a folder of .txt files as the corpus dir");
    }
  }
  if (!IsDir(corpus_dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer corpus dir ", corpus_dir, " does not exist or is not a directory"));
  }
  std::vector<std::string> inputs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(corpus_dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".txt") inputs.push_back(entry.path().string());
  }
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot list ", corpus_dir, ": ", ec.message()));
  if (inputs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer corpus dir ", corpus_dir, " holds no *.txt files"));
  }
  std::sort(inputs.begin(), inputs.end());  // directory order is arbitrary; training should not be

  fs::create_directories(options.out_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create out_dir ", options.out_dir, ": ", ec.message()));
  }
  const std::string prefix = options.out_dir + "/tokenizer";
  // Llama 2's trainer_spec, scaled down: BPE + byte fallback, digits split, identity normalization.
  const std::unordered_map<std::string, std::string> kwargs = {
      {"input", absl::StrJoin(inputs, ",")},
      {"model_prefix", prefix},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"hard_vocab_limit", "false"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"add_dummy_prefix", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"character_coverage", "0.9995"},  // rare characters (日本, emoji) go through byte fallback
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"max_sentence_length", "16384"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", "1"},
      {"minloglevel", "2"},  // the trainer's per-merge progress lines are noise here
  };
  std::string error;
  if (!sp_bridge::Train(kwargs, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("training the tokenizer on ", corpus_dir, " with vocab_size ",
                                                   options.vocab_size, " failed: ", error));
  }
  fs::remove(prefix + ".vocab", ec);  // HF layouts carry only tokenizer.model
  auto sp = sp_bridge::Processor::Open(prefix + ".model", &error);
  if (sp == nullptr) return absl::InternalError(absl::StrCat("reloading ", prefix, ".model: ", error));
  *vocab_size_out = sp->piece_size();

  absl::Status s = WriteFile(options.out_dir + "/tokenizer_config.json", TokenizerConfigJson());
  if (s.ok()) s = WriteFile(options.out_dir + "/special_tokens_map.json", SpecialTokensMapJson());
  if (!s.ok()) return s;
  TP_LOG(INFO) << "trained tokenizer in " << options.out_dir << ": vocab " << *vocab_size_out << " (requested "
               << options.vocab_size << ") from " << inputs.size() << " corpus file(s) in " << corpus_dir;
  return absl::OkStatus();
}

}  // namespace tpserve::coordinator
