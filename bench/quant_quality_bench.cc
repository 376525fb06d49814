// quant-quality-bench: weight quantization quality against the float model, teacher-forced on reference
// token sequences (docs/QUANTIZATION.md; bench/compare-quantization runs it with llama.cpp beside).
// For every reference case (prompt + generated ids of ../shared/reference/<model>.json) each variant's
// logits after every position are compared with tpserve's float32 (as-stored) model: KL(p_float || p_variant)
// per position and top-1 agreement; then greedy ids over --new_tokens from each prompt against float32's.
// Variants: tpserve int8 (layer projections), tpserve int8 + lm_head, and any llama.cpp dumps given with
// --llamacpp NAME=LOGITS.bin[:GREEDY.txt] (written by bench/quantization/llamacpp_quality.cpp from the
// sequences this program writes with --write_seqs / --write_prompts).
//   quant-quality-bench --model ../shared/models/stories260K --reference ../shared/reference/stories260K.json
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "bench/dashed_flags.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (float32 / bf16 / fp16)");
ABSL_FLAG(std::string, reference, "", "reference JSON with cases[].prompt_ids and cases[].generated_ids");
ABSL_FLAG(int, new_tokens, 160, "greedy ids generated per prompt");
ABSL_FLAG(std::string, write_seqs, "", "write the teacher-forced sequences here (one line of ids each) and go on");
ABSL_FLAG(std::string, write_prompts, "", "write the prompts here (one line of ids each) and go on");
ABSL_FLAG(std::vector<std::string>, llamacpp, {}, "NAME=LOGITS.bin[:GREEDY.txt] dumps from llamacpp-quality");

namespace tpserve {
namespace {

using Logits = std::vector<std::vector<float>>;  // [positions][vocab]

struct Model {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<model::LlamaModel> model;
};

absl::StatusOr<Model> Load(const std::string& dir, const model::LlamaModelOptions& mo) {
  Model m;
  kernels::CpuBackendOptions bo;
  bo.threads = 1;
  TP_ASSIGN_OR_RETURN(m.backend, kernels::CreateCpuBackend(bo));
  m.comm = comm::CreateLocalCommunicator();
  TP_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  TP_ASSIGN_OR_RETURN(model::ShardSpec spec, model::ShardSpec::Create(config, 0, 1));
  TP_ASSIGN_OR_RETURN(auto ckpt, checkpoint::Checkpoint::Open(dir));
  TP_ASSIGN_OR_RETURN(m.model, model::LlamaModel::Load(*ckpt, spec, m.backend.get(), m.comm.get(), mo));
  return m;
}

// Feeds `tokens` one decode step each; logits after every token. With `greedy` > 0, then generates that many
// ids (appended to tokens) and returns only the generated part's logits.
absl::StatusOr<Logits> Run(model::LlamaModel& m, std::vector<int32_t>& tokens, int greedy) {
  constexpr int kBlock = 16;
  const int blocks = (static_cast<int>(tokens.size()) + greedy) / kBlock + 1;
  TP_RETURN_IF_ERROR(m.AllocateKv(blocks, kBlock));
  const int vocab = m.config().vocab_size;
  std::vector<int32_t> table(blocks);
  for (int b = 0; b < blocks; ++b) table[b] = b;
  Logits out;
  const size_t prompt = tokens.size();
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (greedy == 0 && t + 1 == tokens.size()) break;  // teacher forcing: no prediction past the last id
    model::StepInput in;
    model::SeqInput s;
    s.token_ids = {tokens[t]};
    s.start_position = static_cast<int32_t>(t);
    s.block_table.assign(table.begin(), table.begin() + static_cast<int64_t>(t) / kBlock + 1);
    s.sample = true;
    in.seqs.push_back(std::move(s));
    TP_ASSIGN_OR_RETURN(model::StepOutput o, m.Forward(in));
    out.emplace_back(o.logits.begin(), o.logits.begin() + vocab);
    if (greedy > 0 && t + 1 == tokens.size() && tokens.size() < prompt + greedy) {
      int32_t best = 0;
      for (int32_t v = 1; v < vocab; ++v) best = o.logits[v] > o.logits[best] ? v : best;
      tokens.push_back(best);
    }
  }
  return out;
}

std::vector<double> LogSoftmax(const float* x, size_t n) {
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] - mx - std::log(sum);
  return out;
}

size_t ArgMax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) best = x[i] > x[best] ? i : best;
  return best;
}

struct Row {
  std::string name;
  std::vector<Logits> forced;                      // per case
  std::vector<std::vector<int32_t>> greedy;        // per case, generated ids (may be empty)
};

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  std::ifstream rf(absl::GetFlag(FLAGS_reference));
  if (dir.empty() || !rf) {
    std::fprintf(stderr, "quant-quality-bench: --model and a readable --reference are required\n");
    return 2;
  }
  const nlohmann::json ref = nlohmann::json::parse(rf);
  std::vector<std::vector<int32_t>> seqs, prompts;
  for (const auto& c : ref["cases"]) {
    std::vector<int32_t> p = c["prompt_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> s = p;
    for (int32_t id : c["generated_ids"].get<std::vector<int32_t>>()) s.push_back(id);
    prompts.push_back(p);
    seqs.push_back(s);
  }
  auto write = [](const std::string& path, const std::vector<std::vector<int32_t>>& v) {
    std::ofstream f(path);
    for (const auto& s : v) {
      for (size_t i = 0; i < s.size(); ++i) f << (i ? " " : "") << s[i];
      f << "\n";
    }
  };
  if (!absl::GetFlag(FLAGS_write_seqs).empty()) write(absl::GetFlag(FLAGS_write_seqs), seqs);
  if (!absl::GetFlag(FLAGS_write_prompts).empty()) write(absl::GetFlag(FLAGS_write_prompts), prompts);
  const int new_tokens = absl::GetFlag(FLAGS_new_tokens);

  std::vector<Row> rows;
  const std::pair<const char*, model::LlamaModelOptions> variants[] = {
      {"tpserve as stored", {}},
      {"tpserve int8", [] { model::LlamaModelOptions o; o.quantization = model::WeightQuantization::kInt8; return o; }()},
      {"tpserve int8 + lm_head", [] {
         model::LlamaModelOptions o;
         o.quantization = model::WeightQuantization::kInt8;
         o.quantize_lm_head = true;
         return o;
       }()}};
  int vocab = 0;
  for (const auto& [name, mo] : variants) {
    absl::StatusOr<Model> m = Load(dir, mo);
    if (!m.ok()) {
      std::fprintf(stderr, "%s: %s\n", name, m.status().ToString().c_str());
      return 1;
    }
    vocab = m->model->config().vocab_size;
    Row row{name, {}, {}};
    for (size_t c = 0; c < seqs.size(); ++c) {
      std::vector<int32_t> s = seqs[c];
      absl::StatusOr<Logits> l = Run(*m->model, s, 0);
      std::vector<int32_t> g = prompts[c];
      absl::StatusOr<Logits> gl = Run(*m->model, g, new_tokens);
      if (!l.ok() || !gl.ok()) {
        std::fprintf(stderr, "%s: %s\n", name, (l.ok() ? gl.status() : l.status()).ToString().c_str());
        return 1;
      }
      row.forced.push_back(std::move(*l));
      row.greedy.emplace_back(g.begin() + prompts[c].size(), g.end());
    }
    rows.push_back(std::move(row));
  }
  for (const std::string& spec : absl::GetFlag(FLAGS_llamacpp)) {
    std::vector<std::string> kv = absl::StrSplit(spec, absl::MaxSplits('=', 1));
    if (kv.size() != 2) {
      std::fprintf(stderr, "--llamacpp %s: expected NAME=LOGITS.bin[:GREEDY.txt]\n", spec.c_str());
      return 2;
    }
    std::vector<std::string> files = absl::StrSplit(kv[1], ':');
    Row row{kv[0], {}, {}};
    std::ifstream lf(files[0], std::ios::binary);
    for (const auto& s : seqs) {
      Logits l(s.size() - 1, std::vector<float>(vocab));
      for (auto& v : l) lf.read(reinterpret_cast<char*>(v.data()), vocab * sizeof(float));
      row.forced.push_back(std::move(l));
    }
    if (!lf) {
      std::fprintf(stderr, "%s: short or unreadable (vocab %d)\n", files[0].c_str(), vocab);
      return 1;
    }
    if (files.size() > 1) {
      std::ifstream gf(files[1]);
      std::string line;
      while (std::getline(gf, line)) {
        std::vector<int32_t> ids;
        for (absl::string_view t : absl::StrSplit(line, ' ', absl::SkipEmpty())) ids.push_back(std::stoi(std::string(t)));
        row.greedy.push_back(ids);
      }
    }
    rows.push_back(std::move(row));
  }

  const Row& base = rows[0];
  std::printf("| weights | mean KL vs float | p99 KL | max KL | top-1 agreement | greedy %d: same ids | greedy: ids before first difference (mean) |\n", new_tokens);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::vector<double> kls;
    int64_t agree = 0;
    for (size_t c = 0; c < seqs.size(); ++c) {
      for (size_t t = 0; t < base.forced[c].size(); ++t) {
        const std::vector<double> p = LogSoftmax(base.forced[c][t].data(), vocab);
        const std::vector<double> q = LogSoftmax(r.forced[c][t].data(), vocab);
        double kl = 0;
        for (int i = 0; i < vocab; ++i) kl += std::exp(p[i]) * (p[i] - q[i]);
        kls.push_back(kl);
        agree += ArgMax(base.forced[c][t].data(), vocab) == ArgMax(r.forced[c][t].data(), vocab);
      }
    }
    std::vector<double> sorted = kls;
    std::sort(sorted.begin(), sorted.end());
    double sum = 0;
    for (double k : kls) sum += k;
    std::string greedy = "n/a", prefix = "n/a";
    if (r.greedy.size() == seqs.size()) {
      int same = 0;
      double run = 0;
      for (size_t c = 0; c < seqs.size(); ++c) {
        same += r.greedy[c] == base.greedy[c];
        size_t n = 0;
        while (n < r.greedy[c].size() && n < base.greedy[c].size() && r.greedy[c][n] == base.greedy[c][n]) ++n;
        run += static_cast<double>(n);
      }
      greedy = std::to_string(same) + " / " + std::to_string(seqs.size());
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.1f", run / static_cast<double>(seqs.size()));
      prefix = buf;
    }
    std::printf("| %s | %.3g | %.3g | %.3g | %.4f (%lld / %zu) | %s | %s |\n", r.name.c_str(), sum / kls.size(),
                sorted[sorted.size() * 99 / 100], sorted.back(), static_cast<double>(agree) / kls.size(),
                static_cast<long long>(agree), kls.size(), greedy.c_str(), prefix.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace tpserve

int main(int argc, char** argv) {
  tpserve::bench::ParseDashedCommandLine(argc, argv);
  return tpserve::Main();
}
