// Implementation of worker/draft_runner.h.
#include "worker/draft_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/model/shard_spec.h"

namespace tpserve::worker {

absl::Status CheckDraftMatchesTarget(const ModelConfig& draft, const ModelConfig& target) {
  auto mismatch = [](const char* what, int draft_value, int target_value) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--draft-model must share the target model's tokenizer, but its ", what, " is ", draft_value,
        " where the target's is ", target_value, " (config.json); pick a draft trained with the same tokenizer"));
  };
  if (draft.vocab_size != target.vocab_size) return mismatch("vocab_size", draft.vocab_size, target.vocab_size);
  if (draft.bos_token_id != target.bos_token_id) {
    return mismatch("bos_token_id", draft.bos_token_id, target.bos_token_id);
  }
  if (draft.eos_token_id != target.eos_token_id) {
    return mismatch("eos_token_id", draft.eos_token_id, target.eos_token_id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DraftRunner>> DraftRunner::Load(const std::string& dir, const ModelConfig& target,
                                                               kernels::Backend* backend,
                                                               const model::LlamaModelOptions& options) {
  auto config = LoadModelConfig(dir);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat("--draft-model ", dir, ": ", config.status().message()));
  }
  TP_RETURN_IF_ERROR(CheckDraftMatchesTarget(*config, target));
  TP_ASSIGN_OR_RETURN(auto spec, model::ShardSpec::Create(*config, 0, 1));
  auto ckpt = checkpoint::Checkpoint::Open(dir);
  if (!ckpt.ok()) {
    return absl::Status(ckpt.status().code(), absl::StrCat("--draft-model ", dir, ": ", ckpt.status().message()));
  }
  auto comm = comm::CreateLocalCommunicator();
  model::LlamaModelOptions o;
  o.weight_dtype = options.weight_dtype;
  o.step_graphs = options.step_graphs;
  auto model = model::LlamaModel::Load(**ckpt, spec, backend, comm.get(), o);
  if (!model.ok()) {
    return absl::Status(model.status().code(), absl::StrCat("--draft-model ", dir, ": ", model.status().message()));
  }
  return std::unique_ptr<DraftRunner>(new DraftRunner(backend, std::move(comm), std::move(*model)));
}

absl::Status DraftRunner::AllocateKv(int num_blocks, int block_size) {
  seqs_.clear();
  free_blocks_.clear();
  block_size_ = block_size;
  TP_RETURN_IF_ERROR(model_->AllocateKv(num_blocks, block_size));
  // Popped from the back: low block ids first.
  for (int b = num_blocks - 1; b >= 0; --b) free_blocks_.push_back(b);
  return absl::OkStatus();
}

void DraftRunner::Forget(uint64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  free_blocks_.insert(free_blocks_.end(), it->second.blocks.rbegin(), it->second.blocks.rend());
  seqs_.erase(it);
}

bool DraftRunner::Resize(SeqCache& seq, int tokens) {
  const int need = BlocksFor(tokens);
  while (static_cast<int>(seq.blocks.size()) > need) {
    free_blocks_.push_back(seq.blocks.back());
    seq.blocks.pop_back();
  }
  const int more = need - static_cast<int>(seq.blocks.size());
  if (more > static_cast<int>(free_blocks_.size())) return false;
  for (int i = 0; i < more; ++i) {
    seq.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
  return true;
}

std::vector<int32_t> DraftRunner::Argmax(const model::StepOutput& out) const {
  std::vector<int32_t> ids(out.num_sampled);
  for (int r = 0; r < out.num_sampled; ++r) {
    if (out.top_k > 0) {
      ids[r] = out.top_ids[static_cast<size_t>(r) * out.top_k];
      continue;
    }
    // Ties -> the lower id, as the sampler's greedy rule; NaN never wins.
    const float* row = out.logits.data() + static_cast<int64_t>(r) * out.vocab_size;
    int best = 0;
    for (int v = 1; v < out.vocab_size; ++v) {
      if (row[v] > row[best] || (row[best] != row[best] && row[v] == row[v])) best = v;
    }
    ids[r] = best;
  }
  return ids;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DraftRunner::Propose(const std::vector<Request>& requests) {
  std::vector<std::vector<int32_t>> proposals(requests.size());
  struct Active {
    size_t request;
    SeqCache* seq;
    int k;
  };
  std::vector<Active> active;
  const int max_pos = model_->config().max_position_embeddings;
  model::StepInput in;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    const int n = static_cast<int>(r.history.size());
    // The draft runs positions [cached, n + k - 1): the history, then its own first k - 1 proposals.
    int k = std::min(r.k, max_pos - n + 1);
    if (n == 0 || k <= 0) continue;
    SeqCache& seq = seqs_[r.seq_id];
    // Roll back to the longest prefix shared with the history; keep one token to run for the next logits.
    size_t common = 0;
    while (common < seq.tokens.size() && common < r.history.size() && seq.tokens[common] == r.history[common]) {
      ++common;
    }
    const int cached = std::min(static_cast<int>(common), n - 1);
    seq.tokens.resize(cached);
    while (k > 0 && !Resize(seq, n + k - 1)) --k;
    if (k == 0) {
      Forget(r.seq_id);  // the pool is full: this sequence goes without proposals for now
      continue;
    }
    active.push_back({i, &seq, k});
    model::SeqInput q;
    q.seq_id = r.seq_id;
    q.token_ids.assign(r.history.begin() + cached, r.history.end());
    q.start_position = cached;
    q.block_table = seq.blocks;
    q.sample = true;
    in.seqs.push_back(std::move(q));
  }
  if (!backend_->is_host()) in.top_k = 1;  // only the argmax crosses the bus
  // Step j feeds each sequence's proposal j - 1 (step 0: its uncached history) and reads proposal j.
  for (int j = 0; !in.seqs.empty(); ++j) {
    auto out = model_->Forward(in);
    if (!out.ok()) {
      for (const Active& a : active) Forget(requests[a.request].seq_id);
      return absl::Status(out.status().code(), absl::StrCat("draft model: ", out.status().message()));
    }
    const std::vector<int32_t> next = Argmax(*out);
    model::StepInput again;
    again.top_k = in.top_k;
    std::vector<Active> still;
    for (size_t a = 0; a < active.size(); ++a) {
      const Active& act = active[a];
      const Request& r = requests[act.request];
      std::vector<int32_t>& got = proposals[act.request];
      if (j == 0) {
        act.seq->tokens.assign(r.history.begin(), r.history.end());
      } else {
        act.seq->tokens.push_back(got.back());
      }
      got.push_back(next[a]);
      if (static_cast<int>(got.size()) == act.k) continue;
      still.push_back(act);
      model::SeqInput q;
      q.seq_id = r.seq_id;
      q.token_ids = {next[a]};
      q.start_position = static_cast<int>(act.seq->tokens.size());
      q.block_table = act.seq->blocks;
      q.sample = true;
      again.seqs.push_back(std::move(q));
    }
    active = std::move(still);
    in = std::move(again);
  }
  return proposals;
}

}  // namespace tpserve::worker
