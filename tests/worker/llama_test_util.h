// Helpers for the LlamaModel tests: reference cases from ../shared/reference, a greedy decode driver that
// plays the coordinator (chunked prefill, paged blocks handed out non-contiguously, batched decode), and
// backend construction.
#pragma once

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "common/model_config.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

namespace tpserve::model::testing {

struct RefCase {
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  std::vector<std::pair<int32_t, float>> first_top5;  // (id, logit); empty when absent
};

inline std::vector<RefCase> LoadRefCases(const std::string& path) {
  std::ifstream f(path);
  nlohmann::json j = nlohmann::json::parse(f);
  std::vector<RefCase> cases;
  for (const auto& c : j["cases"]) {
    RefCase r;
    r.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    r.generated = c["generated_ids"].get<std::vector<int32_t>>();
    if (c.contains("first_step_top5")) {
      for (const auto& e : c["first_step_top5"]) r.first_top5.push_back({e[0].get<int32_t>(), e[1].get<float>()});
    }
    cases.push_back(std::move(r));
  }
  return cases;
}

enum class BackendKind { kReference, kCpu };

inline std::unique_ptr<kernels::Backend> MakeBackend(BackendKind kind, int threads = 1) {
  if (kind == BackendKind::kReference) return kernels::CreateReferenceBackend();
  kernels::CpuBackendOptions o;
  o.threads = threads;
  auto b = kernels::CreateCpuBackend(o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

// The checkpoint in `dir` loaded whole (TP = 1) onto `backend`.
inline absl::StatusOr<std::unique_ptr<LlamaModel>> LoadWholeCheckpoint(const std::string& dir,
                                                                      kernels::Backend* backend,
                                                                      comm::Communicator* comm,
                                                                      const LlamaModelOptions& options) {
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  auto spec = ShardSpec::Create(*config, 0, 1);
  if (!spec.ok()) return spec.status();
  auto ckpt = checkpoint::Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  return LlamaModel::Load(**ckpt, *spec, backend, comm, options);
}

inline int32_t ArgMax(const float* x, int64_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

struct DecodeOptions {
  int chunk = 0;        // prefill chunk size; 0 => the whole prompt in one step
  int block_size = 16;
  int num_blocks = 256;
  int num_new = 8;      // tokens to generate per sequence
  int top_k = 0;        // > 0: steps ask for top candidates (StepInput::top_k); logits then hold those k logits
};

struct DecodeResult {
  absl::Status status;
  std::vector<std::vector<int32_t>> generated;  // per sequence
  std::vector<std::vector<float>> logits;       // per sampling event, in order: [vocab]
};

// Greedy decode of all prompts together. Blocks come from a free list handed out from the top down and
// interleaved across sequences, so block tables are non-contiguous. Deterministic: every TP rank calling it
// with the same arguments issues the same steps (ranks need logits_on_every_rank for the argmax).
inline DecodeResult GreedyDecode(LlamaModel& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const DecodeOptions& o) {
  DecodeResult res;
  res.status = model.AllocateKv(o.num_blocks, o.block_size);
  if (!res.status.ok()) return res;
  const size_t n = prompts.size();
  std::vector<int> next_block_from_top = {o.num_blocks - 1};
  std::vector<std::vector<int32_t>> tables(n);
  std::vector<int> prefilled(n, 0);
  res.generated.assign(n, {});
  const int vocab = model.config().vocab_size;
  for (int guard = 0; guard < 100000; ++guard) {
    StepInput in;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (static_cast<int>(res.generated[i].size()) >= o.num_new) continue;
      SeqInput s;
      s.seq_id = i;
      const int plen = static_cast<int>(prompts[i].size());
      if (prefilled[i] < plen) {
        const int len = o.chunk > 0 ? std::min(o.chunk, plen - prefilled[i]) : plen - prefilled[i];
        s.token_ids.assign(prompts[i].begin() + prefilled[i], prompts[i].begin() + prefilled[i] + len);
        s.start_position = prefilled[i];
        prefilled[i] += len;
        s.sample = prefilled[i] == plen;
      } else {
        s.token_ids = {res.generated[i].back()};
        s.start_position = plen + static_cast<int>(res.generated[i].size()) - 1;
        s.sample = true;
      }
      const int ctx = s.start_position + static_cast<int>(s.token_ids.size());
      while (static_cast<int>(tables[i].size()) * o.block_size < ctx) {
        tables[i].push_back(next_block_from_top[0]--);
      }
      s.block_table = tables[i];
      in.seqs.push_back(std::move(s));
      who.push_back(i);
    }
    if (in.seqs.empty()) return res;
    in.top_k = o.top_k;
    absl::StatusOr<StepOutput> out = model.Forward(in);
    if (!out.ok()) {
      res.status = out.status();
      return res;
    }
    int row = 0;
    for (size_t k = 0; k < in.seqs.size(); ++k) {
      if (!in.seqs[k].sample) continue;
      if (o.top_k > 0 && !out->top_ids.empty()) {
        const size_t at = static_cast<size_t>(row) * o.top_k;
        res.logits.emplace_back(out->top_logits.begin() + at, out->top_logits.begin() + at + o.top_k);
        res.generated[who[k]].push_back(out->top_ids[at]);
        ++row;
        continue;
      }
      if (out->logits.empty()) {  // a rank without logits
        res.status = absl::FailedPreconditionError("no logits on this rank");
        return res;
      }
      const float* l = out->logits.data() + int64_t{row} * vocab;
      ++row;
      res.logits.emplace_back(l, l + vocab);
      res.generated[who[k]].push_back(ArgMax(l, vocab));
    }
  }
  res.status = absl::InternalError("decode did not finish");
  return res;
}

// Teacher forcing of one sequence: feeds tokens[0 .. n-2] one decode step each and returns the logits after
// each ([n - 1][vocab]: the model's predictions of tokens[1 .. n-1]), whatever the model would have chosen.
inline absl::StatusOr<std::vector<std::vector<float>>> TeacherForcedLogits(LlamaModel& model,
                                                                           const std::vector<int32_t>& tokens) {
  constexpr int kBlock = 16;
  const int blocks = static_cast<int>(tokens.size()) / kBlock + 1;
  absl::Status st = model.AllocateKv(blocks, kBlock);
  if (!st.ok()) return st;
  std::vector<int32_t> table(blocks);
  for (int b = 0; b < blocks; ++b) table[b] = b;
  const int vocab = model.config().vocab_size;
  std::vector<std::vector<float>> logits;
  for (size_t t = 0; t + 1 < tokens.size(); ++t) {
    StepInput in;
    SeqInput s;
    s.token_ids = {tokens[t]};
    s.start_position = static_cast<int32_t>(t);
    s.block_table.assign(table.begin(), table.begin() + static_cast<int64_t>(t) / kBlock + 1);
    s.sample = true;
    in.seqs.push_back(std::move(s));
    absl::StatusOr<StepOutput> out = model.Forward(in);
    if (!out.ok()) return out.status();
    if (out->logits.size() < static_cast<size_t>(vocab)) return absl::FailedPreconditionError("no logits");
    logits.emplace_back(out->logits.begin(), out->logits.begin() + vocab);
  }
  return logits;
}

}  // namespace tpserve::model::testing
