// The tensor-parallel Llama executor of one worker rank: weights (this rank's shards), paged KV cache on
// this rank's KV heads, and the forward pass
//   embed (vocab slice, partial) -> all-reduce -> N x [rmsnorm -> qkv (one fused matmul) -> split -> rope
//   -> WriteKv + paged attention on local heads -> o_proj (partial) -> all-reduce -> residual add + rmsnorm
//   -> gate_up (one fused matmul) -> silu*mul -> down (partial) -> all-reduce] -> final norm -> gather the
//   rows that sample -> lm_head (vocab slice) -> all-gather -> logits [num_sampled, vocab] on the host.
// Where collectives go is read from the ShardSpec's activation states (partial -> all-reduce).
// Every rank must call Forward with the same StepInput (the coordinator broadcasts one StepPlan).
// Thread-compatible: one Forward at a time. Backend and Communicator are not owned and must outlive it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/model/activation_dump.h"
#include "worker/model/shard_spec.h"
#include "worker/model/weights.h"

namespace tpserve::model {

struct LlamaModelOptions {
  // Matrices in this dtype; unset => keep the checkpoint's dtype (norms are float32 either way).
  std::optional<DType> weight_dtype;
  // --quantization / --quantize-lm-head (worker/model/quantization.h).
  WeightQuantization quantization = WeightQuantization::kNone;
  bool quantize_lm_head = false;
  // Debug: write every named activation of every step as .npy under this directory ("" => off).
  std::string dump_dir;
  // Download logits on every rank (tests); by default only rank 0, the one that samples, does.
  bool logits_on_every_rank = false;
  // Record decode steps (one token per sequence, all sampled) as backend graphs, one per batch-size bucket,
  // context bound and top-k, and replay them (CUDA graphs: one launch instead of ~500). Only where the
  // backend supports_graphs() and at TP = 1; off for activation dumps. Tests turn it off to compare.
  bool step_graphs = true;
};

// One sequence's work in a step; mirrors worker.proto's SeqStep.
struct SeqInput {
  uint64_t seq_id = 0;               // for error messages and dumps only
  std::vector<int32_t> token_ids;    // a prefill chunk or one decode token
  int32_t start_position = 0;        // position of token_ids[0]; earlier positions are in the KV cache
  std::vector<int32_t> block_table;  // KV blocks covering positions [0, start_position + len(token_ids))
  bool sample = false;               // produce logits after the last of token_ids
  // With sample: logits rows for the last num_logits tokens (1 + proposals to verify, in position order).
  int num_logits = 1;
};

// Most top candidates a step may ask for (Backend::TopK's limit).
inline constexpr int kMaxStepTopK = 32;

struct StepInput {
  std::vector<SeqInput> seqs;
  // > 0: instead of whole logits rows, rank 0 returns each sampled row's `top_k` most likely ids, their
  // logits and the row's log-sum-exp (computed where the logits are: on a GPU only these cross the bus).
  // 0: whole rows in StepOutput::logits. At most min(kMaxStepTopK, vocab_size).
  int top_k = 0;
};

struct StepOutput {
  int num_sampled = 0;
  int vocab_size = 0;                // the real vocab: padded ids are dropped, never sampled
  std::vector<float> logits;         // [num_sampled, vocab_size], in StepInput order of sample = true
                                     // seqs (num_logits rows each, in position order); empty on ranks > 0
                                     // unless logits_on_every_rank
  // StepInput::top_k > 0: [num_sampled, top_k] ids (descending logit, ties -> lower id, NaN as -inf), their
  // logits, and [num_sampled] log-sum-exps; `logits` stays empty.
  int top_k = 0;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logits;
  std::vector<float> lse;
  double allreduce_seconds = 0;      // wall time inside collectives this step (NCCL: enqueue time only)
  double forward_seconds = 0;
};

class LlamaModel {
 public:
  ~LlamaModel();

  // Loads this rank's slices from `checkpoint`. The spec fixes rank / world size; `comm` must match them.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const checkpoint::Checkpoint& checkpoint,
                                                          const ShardSpec& spec, kernels::Backend* backend,
                                                          comm::Communicator* comm,
                                                          const LlamaModelOptions& options);
  // Seeded random weights for any ModelConfig, generated shard by shard in backend memory (benchmarks of
  // full-size shapes without a checkpoint). The same seed gives the same model at every tp.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> CreateRandom(const ShardSpec& spec,
                                                                  kernels::Backend* backend,
                                                                  comm::Communicator* comm,
                                                                  const RandomWeightOptions& weights,
                                                                  const LlamaModelOptions& options);

  const ShardSpec& spec() const { return spec_; }
  const ModelConfig& config() const { return spec_.config(); }
  size_t weight_bytes() const { return weights_->bytes(); }
  const LlamaWeights& weights() const { return *weights_; }
  // Replaces the communicator (after a peer was lost and the group re-formed). Same rank / world size.
  void SetCommunicator(comm::Communicator* comm) { comm_ = comm; }
  // Grows the per-step buffers now, for steps of up to `tokens` tokens, `sampled` sampled rows and `int_words`
  // words of step metadata (ids, positions, block tables, slots), so later steps allocate nothing. Ranks that
  // share a process call it before their first collective: with peer access on, a cudaMalloc / cudaFree can
  // wait on a peer GPU's NCCL kernel that is waiting for this rank.
  void ReserveScratch(int64_t tokens, int64_t sampled, size_t int_words) {
    EnsureScratch(tokens, sampled, int_words);
  }

  // KV bytes of one block across all layers, this rank's KV heads.
  size_t KvBlockBytes(int block_size) const;
  DType KvDType() const;  // the KV cache element type asked of the backend
  // (Re)creates the paged KV cache; drops any previous one first. RESOURCE_EXHAUSTED from the backend when
  // it does not fit.
  absl::Status AllocateKv(int num_blocks, int block_size);
  bool kv_allocated() const { return kv_ != nullptr; }

  // One engine step. INVALID_ARGUMENT (naming the sequence and field) for token ids outside the vocab,
  // positions past max_position_embeddings, block tables that are short or name blocks outside the cache;
  // FAILED_PRECONDITION before AllocateKv; collective failures as the communicator reports them.
  absl::StatusOr<StepOutput> Forward(const StepInput& input);

  double total_allreduce_seconds() const { return total_collective_seconds_; }
  // Decode steps that replayed a recorded graph (tests and benchmarks check the graphs are used).
  int64_t graph_replays() const { return graph_replays_; }
  int64_t steps() const { return step_; }

 private:
  LlamaModel(const ShardSpec& spec, kernels::Backend* backend, comm::Communicator* comm,
             const LlamaModelOptions& options);
  static absl::Status CheckComm(const ShardSpec& spec, kernels::Backend* backend, comm::Communicator* comm);

  // Host-side tables of one step (uploaded once as one int32 array).
  struct StepPlanArrays;
  // graph_context > 0: a graph's bounds (block-table stride and max_context_len fixed by that context).
  absl::Status BuildArrays(const StepInput& input, StepPlanArrays& a, int graph_context = 0) const;
  // The ops of one step after its arrays are uploaded: embedding .. lm_head (.. all-gather, and TopK of
  // top_k candidates into top_ when top_k > 0). Issues no host synchronisation on a stream-ordered backend.
  absl::Status RunStep(const StepPlanArrays& a, int top_k);
  // Downloads the step's result: the first ns of `rows` computed rows, top_k of computed_top_k candidates
  // (or whole logits when top_k == 0).
  absl::Status CollectOutput(int64_t rows, int64_t ns, int computed_top_k, int top_k, StepOutput& out);
  // A decode step's graph bucket (batch 0: run directly).
  struct GraphShape {
    int batch = 0;
    int context = 0;
    int top_k = 0;
  };
  GraphShape GraphShapeFor(const StepPlanArrays& a, int top_k) const;
  absl::Status ForwardGraph(const StepInput& input, const GraphShape& g, StepOutput& out);
  void ReleaseGraphs();
  // Grows the scratch buffers to hold `tokens` tokens and `sampled` sampled rows.
  void EnsureScratch(int64_t tokens, int64_t sampled, size_t int_words);
  // All-reduces `data` when the spec says activation `name` is partial. Times it.
  absl::Status Complete(const char* name, float* data, int64_t count);
  absl::Status Dump(int layer, const char* name, const float* data, int64_t rows, int64_t cols);

  const ShardSpec spec_;
  kernels::Backend* backend_;
  comm::Communicator* comm_;
  LlamaModelOptions options_;
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<kernels::KvCache> kv_;
  int block_size_ = 0;
  int num_blocks_ = 0;

  // Scratch in backend memory, reused across steps and grown on demand.
  struct Buffer {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  void Grow(Buffer& b, size_t bytes);
  Buffer residual_, normed_, qkv_, qkv_split_, attn_, partial_, gate_up_, act_;
  Buffer sampled_, logits_local_, logits_all_, ints_;
  Buffer top_;  // [sampled, kMaxStepTopK] ids | [sampled, kMaxStepTopK] logits | [sampled] lse
  // RoPE cos / sin for positions [0, rope_positions_) (kernels/rope_table.h), built once at load when the
  // backend's fused RopeWriteKv reads one; never reallocated, so step graphs may read it.
  Buffer rope_table_;
  int rope_positions_ = 0;
  void BuildRopeTable();
  int64_t token_capacity_ = 0;
  int64_t sampled_capacity_ = 0;
  std::vector<float> host_logits_;  // [tp, sampled, local_vocab] before unpadding
  const float* gathered_ = nullptr;  // the latest RunStep's logits, [tp, sampled, local_vocab]
  // (batch, context, top_k) -> the backend's graph handle, or 0 when that shape could not be recorded.
  std::map<std::tuple<int, int, int>, int64_t> graphs_;
  int64_t graph_replays_ = 0;

  ActivationDumper dumper_;
  double step_collective_seconds_ = 0;
  double total_collective_seconds_ = 0;
  int64_t step_ = 0;
};

}  // namespace tpserve::model
