// Implementation of bench/loadgen/grounded_workload.h.
#include "bench/loadgen/grounded_workload.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/prompt_tokenizer.h"

namespace tpserve::bench {
namespace {

using json = nlohmann::json;

constexpr int kCharsPerTokenGuess = 4;  // without a tokenizer
constexpr int kAnswerSlack = 8;         // output_len = answer tokens + this (a closing remark, EOS)

// Every sentence of corpus_dir/*.txt (files sorted by name), in order.
absl::StatusOr<std::vector<std::string>> CorpusSentences(const std::string& dir) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".txt") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> out;
  for (const auto& f : files) {
    std::ifstream in(f);
    for (std::string line; std::getline(in, line);) {
      for (absl::string_view s : absl::StrSplit(line, ". ", absl::SkipWhitespace())) {
        std::string sentence(absl::StripAsciiWhitespace(s));
        if (sentence.size() < 20) continue;
        if (sentence.back() != '.' && sentence.back() != '?' && sentence.back() != '!') sentence += '.';
        out.push_back(std::move(sentence));
      }
    }
  }
  if (ec || out.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("--corpus-dir '", dir, "' has too little text (*.txt) to build the grounded workload from"));
  }
  return out;
}

class Lengths {
 public:
  explicit Lengths(PromptTokenizer* tokenizer) : tokenizer_(tokenizer) {}
  absl::StatusOr<int> Tokens(const std::string& text) {
    if (tokenizer_ == nullptr) return static_cast<int>(text.size()) / kCharsPerTokenGuess + 1;
    v1::TokenizeRequest req;
    req.set_text(text);
    req.set_add_bos(false);
    auto ids = tokenizer_->Tokenize(req);
    if (!ids.ok()) return ids.status();
    return static_cast<int>(ids->size());
  }

 private:
  PromptTokenizer* tokenizer_;
};

// Consecutive sentences from `start` (wrapping) until about `tokens` tokens, by the corpus's own ratio.
std::vector<std::string> Passage(const std::vector<std::string>& sentences, size_t start, int chars) {
  std::vector<std::string> out;
  int used = 0;
  for (size_t i = start; used < chars && out.size() < sentences.size(); ++i) {
    const std::string& s = sentences[i % sentences.size()];
    out.push_back(s);
    used += static_cast<int>(s.size()) + 1;
  }
  return out;
}

// A C function of about `lines` statements over the identifier `name`.
std::string CodeFunction(const std::string& name, int lines, std::mt19937_64* rng) {
  static const char* kStatements[] = {
      "  {N}_total += {N}[i] * scale;",
      "  if ({N}[i] > limit) {N}[i] = limit;",
      "  {N}_count += ({N}[i] != 0);",
      "  sum_sq += (double){N}[i] * {N}[i];",
      "  {N}[i] = ({N}[i] + offset) % modulus;",
      "  if ({N}[i] < {N}_min) {N}_min = {N}[i];",
      "  log_value(\"{N}\", i, {N}[i]);",
      "  {N}_hash = {N}_hash * 31 + (unsigned){N}[i];",
  };
  std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(kStatements)) - 1);
  std::string body = absl::StrCat("int process_", name, "(int *", name, ", int n, int scale, int limit,\n",
                                  "    int offset, int modulus) {\n  long ", name, "_total = 0;\n  int ", name,
                                  "_count = 0, ", name, "_min = 1 << 30;\n  unsigned ", name,
                                  "_hash = 7;\n  double sum_sq = 0;\n  for (int i = 0; i < n; ++i) {\n");
  for (int l = 0; l < lines; ++l) {
    absl::StrAppend(&body, "  ", absl::StrReplaceAll(kStatements[pick(*rng)], {{"{N}", name}}), "\n");
  }
  absl::StrAppend(&body, "  }\n  return (int)(", name, "_total + ", name, "_count + ", name, "_min + ", name,
                  "_hash + (long)sum_sq);\n}\n");
  return body;
}

}  // namespace

absl::StatusOr<std::vector<json>> GroundedRows(const GroundedOptions& o, int count, PromptTokenizer* tokenizer) {
  if (o.input_len < 16) return absl::InvalidArgumentError("--input-len must be >= 16 for --dataset grounded");
  auto sentences = CorpusSentences(o.corpus_dir);
  if (!sentences.ok()) return sentences.status();
  // Input + answer (as long as the input for a repetition) + the instructions must fit the context.
  int budget = o.input_len;
  if (o.max_context > 0) budget = std::min(budget, (o.max_context - 96) / 2);
  if (budget < 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's context (", o.max_context, " tokens) is too short for --dataset grounded"));
  }
  std::mt19937_64 rng(o.seed ^ 0x5eedf00dull);
  std::uniform_int_distribution<size_t> offset(0, sentences->size() - 1);
  Lengths lengths(tokenizer);
  static const char* kNames[] = {"samples", "counts", "pixels", "ratings", "prices", "weights", "scores"};
  std::vector<json> rows;
  for (int i = 0; i < count; ++i) {
    std::string kind, prompt, answer;
    int input_tokens = 0;
    // Size by characters, measure, shrink until within budget (a tokenizer's ratio is not known in advance).
    for (int chars = budget * kCharsPerTokenGuess; chars > 0;) {
      switch (i % 3) {
        case 0: {
          kind = "extraction";
          std::vector<std::string> doc = Passage(*sentences, offset(rng), chars);
          // The keyword: a long word of a random sentence of the document.
          std::vector<std::string> words = absl::StrSplit(doc[rng() % doc.size()], ' ', absl::SkipEmpty());
          std::string word = "the";
          for (const std::string& w : words) {
            std::string clean(absl::StripSuffix(absl::StripSuffix(w, ","), "."));
            if (clean.size() > word.size() && absl::c_all_of(clean, absl::ascii_isalpha)) word = clean;
          }
          std::vector<std::string> hits;
          for (const std::string& s : doc) {
            if (absl::StrContains(s, word)) hits.push_back(s);
          }
          answer = absl::StrJoin(hits, "\n");
          prompt = absl::StrCat("Read the document below. Copy, word for word, every sentence of it that contains the "
                                "word \"", word, "\", one sentence per line, and nothing else.\n\nDocument:\n",
                                absl::StrJoin(doc, " "));
          break;
        }
        case 1: {
          kind = "repetition";
          answer = absl::StrJoin(Passage(*sentences, offset(rng), chars), " ");
          prompt = absl::StrCat("Repeat the following passage exactly, word for word, and nothing else.\n\n", answer);
          break;
        }
        default: {
          kind = "code_edit";
          const std::string from = kNames[rng() % std::size(kNames)];
          const std::string to = absl::StrCat(from, "_v2");
          std::mt19937_64 code_rng(rng());
          const std::string code = CodeFunction(from, std::max(2, chars / 40), &code_rng);
          answer = absl::StrCat("```c\n", absl::StrReplaceAll(code, {{from, to}}), "```");
          prompt = absl::StrCat("Rename the identifier `", from, "` to `", to, "` everywhere in this C function ",
                                "(including inside longer names) and return the whole function, otherwise "
                                "unchanged, in one code block.\n\n```c\n", code, "```");
          break;
        }
      }
      auto n = lengths.Tokens(prompt);
      if (!n.ok()) return n.status();
      input_tokens = *n;
      if (input_tokens <= budget + 96 || chars < 64) break;
      chars = static_cast<int>(static_cast<int64_t>(chars) * budget / input_tokens * 9 / 10);
    }
    auto answer_tokens = lengths.Tokens(answer);
    if (!answer_tokens.ok()) return answer_tokens.status();
    json row = {{"messages", json::array({{{"role", "user"}, {"content", prompt}}})},
                {"output_len", std::max(1, *answer_tokens + kAnswerSlack)},
                {"kind", kind},
                {"answer", answer}};
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace tpserve::bench
