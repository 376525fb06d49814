// Implementation of bench/loadgen/workload.h.
#include "bench/loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/grounded_workload.h"
#include "bench/loadgen/prompt_tokenizer.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {
namespace {

// A context "limit" when the model's is unknown: lengths are then the server's to judge.
constexpr int kUnknownContext = 1 << 24;

// Real-text token stream: every non-empty line of corpus_dir/*.txt (sorted by name), tokenized one line at a
// time (one long text would make the server's BPE merge loop slow) and concatenated, until `want` tokens.
absl::StatusOr<std::vector<int32_t>> CorpusTokens(const std::string& dir, size_t want, PromptTokenizer* tokenizer) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".txt") files.push_back(e.path());
  }
  if (ec || files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--corpus-dir '", dir, "' has no *.txt files to build synthetic prompts from"));
  }
  std::sort(files.begin(), files.end());
  std::vector<int32_t> ids;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line;
    while (ids.size() < want && std::getline(in, line)) {
      absl::string_view l = absl::StripAsciiWhitespace(line);
      if (l.empty()) continue;
      v1::TokenizeRequest req;
      req.set_text(std::string(l));
      req.set_add_bos(false);
      auto t = tokenizer->Tokenize(req);
      if (!t.ok()) return t.status();
      ids.insert(ids.end(), t->begin(), t->end());
    }
    if (ids.size() >= want) break;
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat("--corpus-dir '", dir, "' tokenized to nothing"));
  return ids;
}

// n tokens of the corpus starting at `offset`, wrapping around (still real text, never one repeated id).
void AppendSlice(const std::vector<int32_t>& corpus, size_t offset, int n, v1::TokenIdsInput* out) {
  for (int i = 0; i < n; ++i) out->add_ids(corpus[(offset + i) % corpus.size()]);
}

absl::StatusOr<std::vector<nlohmann::json>> ReadDataset(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--dataset '", path, "' cannot be opened"));
  std::vector<nlohmann::json> rows;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = absl::StrCat("--dataset ", path, ":", lineno);
    if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(where + " is not a JSON object");
    const bool has_prompt = j.contains("prompt") && j["prompt"].is_string();
    const bool has_messages = j.contains("messages") && j["messages"].is_array();
    if (has_prompt == has_messages) {
      return absl::InvalidArgumentError(where + " needs exactly one of \"prompt\" (string) or \"messages\" (array)");
    }
    if (has_messages) {
      for (const auto& m : j["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
            !m["content"].is_string()) {
          return absl::InvalidArgumentError(where + ": each message needs string \"role\" and \"content\"");
        }
      }
    }
    if (j.contains("output_len") && (!j["output_len"].is_number_integer() || j["output_len"].get<int>() < 1)) {
      return absl::InvalidArgumentError(where + ": \"output_len\" must be an integer >= 1");
    }
    rows.push_back(std::move(j));
  }
  if (rows.empty()) return absl::InvalidArgumentError(absl::StrCat("--dataset '", path, "' has no requests"));
  return rows;
}

absl::Status CheckLen(const char* flag, const LenSpec& s) {
  if (s.mean < 1) return absl::InvalidArgumentError(absl::StrCat(flag, " must be >= 1, got ", s.mean));
  if (s.range < 0 || s.range >= 1) {
    return absl::InvalidArgumentError(absl::StrCat("--len-range must be in [0, 1), got ", s.range));
  }
  if (s.std_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("--len-std must be >= 0"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LenDist> ParseLenDist(const std::string& name) {
  if (name == "fixed") return LenDist::kFixed;
  if (name == "uniform") return LenDist::kUniform;
  if (name == "normal") return LenDist::kNormal;
  return absl::InvalidArgumentError(absl::StrCat("--len-dist must be fixed, uniform or normal, got '", name, "'"));
}

int DrawLen(const LenSpec& spec, int max, std::mt19937_64* rng) {
  double v = spec.mean;
  switch (spec.dist) {
    case LenDist::kFixed:
      break;
    case LenDist::kUniform: {
      std::uniform_real_distribution<double> d(spec.mean * (1 - spec.range), spec.mean * (1 + spec.range));
      v = d(*rng);
      break;
    }
    case LenDist::kNormal: {
      std::normal_distribution<double> d(spec.mean, spec.std_tokens > 0 ? spec.std_tokens : spec.mean / 4.0);
      v = d(*rng);
      break;
    }
  }
  return std::clamp(static_cast<int>(std::lround(v)), 1, std::max(1, max));
}

absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& o, int count,
                                                       PromptTokenizer* tokenizer) {
  if (auto s = CheckLen("--input-len", o.input); !s.ok()) return s;
  if (auto s = CheckLen("--output-len", o.output); !s.ok()) return s;
  if (o.prefix_len < 0 || o.num_prefixes < 1) {
    return absl::InvalidArgumentError("--prefix-len must be >= 0 and --num-prefixes >= 1");
  }
  if (tokenizer == nullptr && o.dataset.empty()) {
    return absl::InvalidArgumentError("synthetic prompts need the served model's tokenizer");
  }
  const int known_ctx = o.max_context > 0 ? o.max_context : tokenizer != nullptr ? tokenizer->max_context() : 0;
  const int max_ctx = known_ctx > 0 ? known_ctx : kUnknownContext;

  std::mt19937_64 rng(o.seed);
  std::vector<RequestSpec> out;
  out.reserve(count);
  auto fill_common = [&](RequestSpec* r) {
    r->request.mutable_sampling()->set_temperature(o.temperature);
    if (o.temperature > 0) r->request.mutable_sampling()->set_seed(rng());
    r->request.mutable_stopping()->set_max_new_tokens(r->output_len);
    r->request.mutable_stopping()->set_ignore_eos(o.ignore_eos);
  };

  if (!o.dataset.empty()) {
    auto rows = o.dataset == kGroundedDataset
                    ? GroundedRows({o.corpus_dir, o.input.mean, known_ctx, o.seed}, count, tokenizer)
                    : ReadDataset(o.dataset);
    if (!rows.ok()) return rows.status();
    // Tokenize each distinct line once so input lengths are known and checked against the context.
    std::vector<int> input_lens;
    for (size_t i = 0; i < rows->size() && tokenizer != nullptr; ++i) {
      const auto& j = (*rows)[i];
      v1::TokenizeRequest tr;
      if (j.contains("prompt")) {
        tr.set_text(j["prompt"].get<std::string>());
        tr.set_add_bos(true);
      } else {
        for (const auto& m : j["messages"]) {
          auto* cm = tr.mutable_chat()->add_messages();
          cm->set_role(m["role"].get<std::string>());
          cm->set_content(m["content"].get<std::string>());
        }
      }
      auto ids = tokenizer->Tokenize(tr);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--dataset ", o.dataset, " request ", i + 1, ": ", ids.status().message()));
      }
      int n = static_cast<int>(ids->size());
      if (!j.contains("messages")) n = std::max(n, 1);
      if (n >= max_ctx) {
        return absl::InvalidArgumentError(absl::StrCat("--dataset ", o.dataset, " request ", i + 1, " has ", n,
                                                       " prompt tokens; the model's context is ", max_ctx));
      }
      input_lens.push_back(n);
    }
    for (int i = 0; i < count; ++i) {
      const size_t k = i % rows->size();
      const auto& j = (*rows)[k];
      RequestSpec r;
      r.expected_input_len = -1;
      if (j.contains("prompt")) {
        r.request.set_prompt(j["prompt"].get<std::string>());
      } else {
        for (const auto& m : j["messages"]) {
          auto* cm = r.request.mutable_chat()->add_messages();
          cm->set_role(m["role"].get<std::string>());
          cm->set_content(m["content"].get<std::string>());
        }
      }
      const int room = max_ctx - (input_lens.empty() ? 0 : input_lens[k]);
      r.output_len = j.contains("output_len") ? std::min(j["output_len"].get<int>(), room)
                                              : DrawLen(o.output, room, &rng);
      r.request.set_request_id(absl::StrCat("bench-", i));
      fill_common(&r);
      out.push_back(std::move(r));
    }
    return out;
  }

  if (known_ctx > 0 && o.input.mean + o.output.mean > max_ctx) {
    return absl::InvalidArgumentError(absl::StrCat("--input-len ", o.input.mean, " + --output-len ",
                                                   o.output.mean, " exceeds the model's context of ", max_ctx,
                                                   " tokens"));
  }
  if (o.prefix_len > 0 && o.prefix_len + 2 > o.input.mean) {
    return absl::InvalidArgumentError(absl::StrCat("--prefix-len ", o.prefix_len, " must leave room in --input-len ",
                                                   o.input.mean, " for BOS and at least one unique token"));
  }
  const int max_input = o.input.dist == LenDist::kFixed ? o.input.mean : max_ctx - 1;
  const size_t want =
      std::max<size_t>(32768, 4 * static_cast<size_t>(max_input) + static_cast<size_t>(o.prefix_len) * o.num_prefixes);
  auto corpus = CorpusTokens(o.corpus_dir, want, tokenizer);
  if (!corpus.ok()) return corpus.status();
  std::uniform_int_distribution<size_t> offset(0, corpus->size() - 1);
  std::vector<size_t> prefix_offsets;
  // Distinct start offsets: two prompts starting at the same place would share KV blocks and the prefix cache
  // would flatter the run. (Bounded redraws; a tiny corpus may still repeat.)
  std::unordered_set<size_t> used;
  auto fresh_offset = [&] {
    size_t off = offset(rng);
    for (int tries = 0; tries < 64 && !used.insert(off).second; ++tries) off = offset(rng);
    return off;
  };
  for (int k = 0; k < (o.prefix_len > 0 ? o.num_prefixes : 0); ++k) prefix_offsets.push_back(fresh_offset());
  std::uniform_int_distribution<int> pick_prefix(0, std::max(0, o.num_prefixes - 1));

  for (int i = 0; i < count; ++i) {
    RequestSpec r;
    int input = DrawLen(o.input, max_ctx - 1, &rng);
    if (o.prefix_len > 0) input = std::max(input, o.prefix_len + 2);
    r.output_len = DrawLen(o.output, max_ctx - input, &rng);
    r.expected_input_len = input;
    auto* ids = r.request.mutable_token_ids();
    ids->add_ids(tokenizer->bos_id());
    int unique = input - 1;
    if (o.prefix_len > 0) {
      r.prefix_id = pick_prefix(rng);
      AppendSlice(*corpus, prefix_offsets[r.prefix_id], o.prefix_len, ids);
      unique -= o.prefix_len;
    }
    AppendSlice(*corpus, fresh_offset(), unique, ids);
    r.request.set_request_id(absl::StrCat("bench-", i));
    fill_common(&r);
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<Arrival> ParseArrival(const std::string& name) {
  if (name == "poisson") return Arrival::kPoisson;
  if (name == "constant") return Arrival::kConstant;
  return absl::InvalidArgumentError(absl::StrCat("--arrival must be poisson or constant, got '", name, "'"));
}

std::vector<double> ArrivalGaps(Arrival arrival, double rate, double burstiness, int count, uint64_t seed) {
  std::vector<double> gaps(count, 0.0);
  if (!(rate > 0) || std::isinf(rate)) return gaps;
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  // Gamma(shape k, scale theta) has mean k*theta: theta = 1 / (rate * k) keeps the mean gap at 1/rate.
  std::gamma_distribution<double> gamma(burstiness, 1.0 / (rate * burstiness));
  for (int i = 0; i < count; ++i) gaps[i] = arrival == Arrival::kConstant ? 1.0 / rate : gamma(rng);
  return gaps;
}

}  // namespace tpserve::bench
