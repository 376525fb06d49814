// The draft model of --speculative-method draft: a small Llama sharing the target's tokenizer, held whole
// (unsharded) by rank 0 beside its target shard, that proposes each speculating sequence's next tokens.
//
// Why rank 0 only, unsharded: the proposals must be the same for every rank that uses them, and only rank 0
// uses them (it samples and verifies); a draft is small, so sharding it would buy little and cost a
// collective per draft token on every rank. Rank 0 returns the proposals with the step result
// (worker.v1 StepResult.proposals) and the coordinator schedules them as the next step's verify tokens, the
// path the n-gram proposals take (docs/SPECULATIVE.md).
//
// Proposals are the draft's greedy tokens (q one-hot). The verify rule of the worker (sample the target at
// each position with the counter-based RNG, stop after the first sampled token that differs) is then the
// standard rejection rule, and a seeded request samples exactly what it samples without speculation.
//
// KV: the draft keeps its own paged cache with its own block pool (as many blocks as the target's pool:
// the draft caches about as many tokens per sequence as the target). Per sequence it remembers which
// tokens its cache holds; before proposing it keeps the longest prefix shared with the sequence's new
// history (rolling rejected proposals back) and runs the rest as one chunk, then k - 1 single-token steps.
// A sequence whose history changed wholesale (replay after a worker restart, preemption) is rebuilt from
// its token history the same way. Forget() frees a sequence's blocks (finished, or restarted).
//
// Thread-compatible: the worker's step loop calls it, one call at a time. The backend is not owned.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model_config.h"
#include "kernels/backend.h"
#include "worker/comm/communicator.h"
#include "worker/model/llama_model.h"

namespace tpserve::worker {

// FAILED_PRECONDITION naming --draft-model when the draft cannot share the target's tokenizer: a different
// vocab size or bos / eos ids (the proposals are token ids of the target's vocabulary).
absl::Status CheckDraftMatchesTarget(const ModelConfig& draft, const ModelConfig& target);

class DraftRunner {
 public:
  // Loads DIR (safetensors or PyTorch zip shards, like the target) whole onto `backend`, after
  // CheckDraftMatchesTarget. `options` as for the target (dtype); quantization is not applied.
  static absl::StatusOr<std::unique_ptr<DraftRunner>> Load(const std::string& dir, const ModelConfig& target,
                                                           kernels::Backend* backend,
                                                           const model::LlamaModelOptions& options);

  size_t weight_bytes() const { return model_->weight_bytes(); }
  size_t KvBlockBytes(int block_size) const { return model_->KvBlockBytes(block_size); }
  // (Re)creates the draft's KV pool; every sequence's cache is dropped.
  absl::Status AllocateKv(int num_blocks, int block_size);

  struct Request {
    uint64_t seq_id = 0;
    absl::Span<const int32_t> history;  // prompt + generated tokens, the last one not yet run by the target
    int k = 0;                          // proposals wanted, >= 1
  };
  // The draft's greedy continuation of each request's history: up to k tokens each (fewer, or none, when
  // its KV pool or context length cannot hold them). Errors only when a draft forward pass failed; the
  // sequences of the failed call are forgotten then.
  absl::StatusOr<std::vector<std::vector<int32_t>>> Propose(const std::vector<Request>& requests);

  // Drops a sequence's cache and frees its blocks. No-op when unknown.
  void Forget(uint64_t seq_id);
  size_t num_sequences() const { return seqs_.size(); }
  int num_free_blocks() const { return static_cast<int>(free_blocks_.size()); }

 private:
  DraftRunner(kernels::Backend* backend, std::unique_ptr<comm::Communicator> comm,
              std::unique_ptr<model::LlamaModel> model)
      : backend_(backend), comm_(std::move(comm)), model_(std::move(model)) {}

  struct SeqCache {
    std::vector<int32_t> tokens;  // tokens whose KV is in `blocks`, position order
    std::vector<int32_t> blocks;  // block table
  };
  int BlocksFor(int tokens) const { return (tokens + block_size_ - 1) / block_size_; }
  // Gives `seq` exactly BlocksFor(tokens) blocks; false (nothing changed beyond releasing) when the pool
  // cannot.
  bool Resize(SeqCache& seq, int tokens);
  // Greedy token of each sampled row of `out`, in row order.
  std::vector<int32_t> Argmax(const model::StepOutput& out) const;

  kernels::Backend* backend_;
  std::unique_ptr<comm::Communicator> comm_;  // local (world size 1): the draft is never sharded
  std::unique_ptr<model::LlamaModel> model_;
  int block_size_ = 16;
  std::vector<int32_t> free_blocks_;
  absl::node_hash_map<uint64_t, SeqCache> seqs_;  // node map: Propose holds pointers while inserting
};

}  // namespace tpserve::worker
