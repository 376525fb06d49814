// The tensor-parallel Llama forward pass over a paged KV cache (see llama_model.h).
#include "worker/model/llama_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kernels/rope_table.h"

namespace tpserve::model {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Segments of the packed int32 upload start on 64-byte boundaries.
size_t AlignWords(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

// Host-side tables of one step, packed into one int32 array for a single upload.
struct LlamaModel::StepPlanArrays {
  std::vector<int32_t> ints;
  size_t ids = 0, positions = 0, query_start = 0, context_lens = 0, block_tables = 0, slot_mapping = 0,
         split = 0, sample_rows = 0;
  int num_seqs = 0;
  int64_t num_tokens = 0;
  int max_blocks = 0;
  int max_query_len = 0;
  int max_context_len = 0;
  int num_sampled = 0;
};

LlamaModel::LlamaModel(const ShardSpec& spec, kernels::Backend* backend, comm::Communicator* comm,
                       const LlamaModelOptions& options)
    : spec_(spec), backend_(backend), comm_(comm), options_(options), dumper_(options.dump_dir, spec.rank()) {}

LlamaModel::~LlamaModel() {
  ReleaseGraphs();
  kv_.reset();
  for (Buffer* b : {&residual_, &normed_, &qkv_, &qkv_split_, &attn_, &partial_, &gate_up_, &act_, &sampled_,
                    &logits_local_, &logits_all_, &ints_, &top_, &rope_table_}) {
    if (b->ptr != nullptr) backend_->Free(b->ptr);
  }
  weights_.reset();  // frees through backend_, which outlives us
}

absl::Status LlamaModel::CheckComm(const ShardSpec& spec, kernels::Backend* backend, comm::Communicator* comm) {
  if (backend == nullptr) return absl::InvalidArgumentError("LlamaModel: backend is null");
  if (comm == nullptr) return absl::InvalidArgumentError("LlamaModel: communicator is null");
  if (comm->world_size() != spec.world_size() || comm->rank() != spec.rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LlamaModel: communicator is rank ", comm->rank(), " of ", comm->world_size(), " but the shard spec is rank ",
        spec.rank(), " of --tp ", spec.world_size()));
  }
  // Gloo reads and writes the buffers it is given with the CPU: device memory would crash it.
  if (spec.world_size() > 1 && !backend->is_host() && comm->name() == "gloo") {
    return absl::InvalidArgumentError(absl::StrCat("the gloo communicator needs host memory but backend ",
                                                   backend->name(), " keeps activations on the device; use nccl"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const checkpoint::Checkpoint& checkpoint,
                                                             const ShardSpec& spec, kernels::Backend* backend,
                                                             comm::Communicator* comm,
                                                             const LlamaModelOptions& options) {
  TP_RETURN_IF_ERROR(CheckComm(spec, backend, comm));
  std::unique_ptr<LlamaModel> m(new LlamaModel(spec, backend, comm, options));
  WeightLoadOptions wo;
  wo.dtype = options.weight_dtype;
  wo.quantization = options.quantization;
  wo.quantize_lm_head = options.quantize_lm_head;
  TP_ASSIGN_OR_RETURN(m->weights_, LlamaWeights::Load(checkpoint, m->spec_, backend, wo));
  m->BuildRopeTable();
  return m;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::CreateRandom(const ShardSpec& spec,
                                                                     kernels::Backend* backend,
                                                                     comm::Communicator* comm,
                                                                     const RandomWeightOptions& weights,
                                                                     const LlamaModelOptions& options) {
  TP_RETURN_IF_ERROR(CheckComm(spec, backend, comm));
  std::unique_ptr<LlamaModel> m(new LlamaModel(spec, backend, comm, options));
  TP_ASSIGN_OR_RETURN(m->weights_, LlamaWeights::Random(m->spec_, backend, weights));
  m->BuildRopeTable();
  return m;
}

void LlamaModel::BuildRopeTable() {
  const ModelConfig& c = config();
  if (!backend_->uses_rope_table() || c.max_position_embeddings <= 0) return;
  const std::vector<float> table = kernels::RopeCosSinTable(c.rope_theta, c.head_dim, c.max_position_embeddings);
  rope_table_.bytes = table.size() * sizeof(float);
  rope_table_.ptr = backend_->Alloc(rope_table_.bytes);
  backend_->Upload(rope_table_.ptr, table.data(), rope_table_.bytes);
  rope_positions_ = c.max_position_embeddings;
}

// K and V in the model's dtype when its matrices are bf16 (as vLLM's kv_cache_dtype "auto"): a bf16 model's
// keys and values are bf16 products in the checkpoint's own framework too, and they halve the bytes decode
// reads per token of context. float32 and float16 models keep a float32 cache (the stories260K references).
DType LlamaModel::KvDType() const {
  // int8 projections: the dtype the checkpoint's matrices kept (the embedding's).
  const DType matrices = weights_->layer(0).qkv.dtype == DType::kI8 ? weights_->embed().dtype : weights_->layer(0).qkv.dtype;
  return matrices == DType::kBF16 ? DType::kBF16 : DType::kF32;
}

size_t LlamaModel::KvBlockBytes(int block_size) const {
  kernels::KvCacheSpec s;
  s.num_layers = config().num_layers;
  s.num_blocks = 1;
  s.block_size = block_size;
  s.num_kv_heads = spec_.local_kv_heads();
  s.head_dim = config().head_dim;
  s.dtype = KvDType();
  return backend_->KvBlockBytes(s);
}

absl::Status LlamaModel::AllocateKv(int num_blocks, int block_size) {
  if (num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("AllocateKv: num_blocks must be > 0, got ", num_blocks));
  }
  if (block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("AllocateKv: block_size must be > 0, got ", block_size));
  }
  ReleaseGraphs();  // they read the old cache
  kv_.reset();  // free the old cache before asking for the new one
  kernels::KvCacheSpec s;
  s.num_layers = config().num_layers;
  s.num_blocks = num_blocks;
  s.block_size = block_size;
  s.num_kv_heads = spec_.local_kv_heads();
  s.head_dim = config().head_dim;
  s.dtype = KvDType();
  TP_ASSIGN_OR_RETURN(kv_, backend_->CreateKvCache(s));
  block_size_ = block_size;
  num_blocks_ = num_blocks;
  return absl::OkStatus();
}

void LlamaModel::Grow(Buffer& b, size_t bytes) {
  if (bytes <= b.bytes) return;
  ReleaseGraphs();  // they read the old buffer
  if (b.ptr != nullptr) backend_->Free(b.ptr);
  b.ptr = backend_->Alloc(bytes);
  b.bytes = bytes;
}

void LlamaModel::EnsureScratch(int64_t tokens, int64_t sampled, size_t int_words) {
  const ModelConfig& c = config();
  const size_t f = sizeof(float);
  if (tokens > token_capacity_) {
    token_capacity_ = std::max<int64_t>({tokens, 2 * token_capacity_, 16});
    const size_t t = static_cast<size_t>(token_capacity_);
    Grow(residual_, t * c.hidden_size * f);
    Grow(normed_, t * c.hidden_size * f);
    Grow(qkv_, t * spec_.local_qkv_size() * f);
    Grow(qkv_split_, t * spec_.local_qkv_size() * f);
    Grow(attn_, t * spec_.local_q_size() * f);
    Grow(partial_, t * c.hidden_size * f);
    Grow(gate_up_, t * 2 * spec_.local_intermediate() * f);
    Grow(act_, t * spec_.local_intermediate() * f);
  }
  if (sampled > sampled_capacity_) {
    sampled_capacity_ = std::max<int64_t>({sampled, 2 * sampled_capacity_, 8});
    const size_t s = static_cast<size_t>(sampled_capacity_);
    Grow(sampled_, s * c.hidden_size * f);
    Grow(logits_local_, s * spec_.local_vocab() * f);
    Grow(logits_all_, s * spec_.padded_vocab() * f);
    Grow(top_, s * (2 * kMaxStepTopK + 1) * sizeof(int32_t));
  }
  Grow(ints_, std::max<size_t>(int_words * sizeof(int32_t), 4096));
}

absl::Status LlamaModel::BuildArrays(const StepInput& input, StepPlanArrays& a, int graph_context) const {
  const ModelConfig& c = config();
  a.num_seqs = static_cast<int>(input.seqs.size());
  a.num_tokens = 0;
  a.max_blocks = 1;
  for (size_t i = 0; i < input.seqs.size(); ++i) {
    const SeqInput& s = input.seqs[i];
    const std::string who = absl::StrCat("seqs[", i, "] (seq_id ", s.seq_id, ")");
    if (s.token_ids.empty()) return absl::InvalidArgumentError(absl::StrCat(who, " has no token_ids"));
    if (s.sample && (s.num_logits < 1 || s.num_logits > static_cast<int>(s.token_ids.size()))) {
      return absl::InvalidArgumentError(absl::StrCat(who, " asks for ", s.num_logits, " logits rows from ",
                                                     s.token_ids.size(), " tokens"));
    }
    if (s.start_position < 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, " start_position ", s.start_position, " is negative"));
    }
    const int64_t ctx = int64_t{s.start_position} + static_cast<int64_t>(s.token_ids.size());
    if (ctx > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(who, " reaches position ", ctx, ", past max_position_embeddings ",
                                                     c.max_position_embeddings));
    }
    for (size_t t = 0; t < s.token_ids.size(); ++t) {
      if (s.token_ids[t] < 0 || s.token_ids[t] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(who, " token_ids[", t, "] = ", s.token_ids[t],
                                                       " is outside the vocab [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t need = (ctx + block_size_ - 1) / block_size_;
    if (static_cast<int64_t>(s.block_table.size()) < need) {
      return absl::InvalidArgumentError(absl::StrCat(who, " block_table has ", s.block_table.size(),
                                                     " blocks but positions [0, ", ctx, ") need ", need,
                                                     " of block_size ", block_size_));
    }
    for (int64_t b = 0; b < need; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= num_blocks_) {
        return absl::InvalidArgumentError(absl::StrCat(who, " block_table[", b, "] = ", s.block_table[b],
                                                       " is outside the KV cache [0, ", num_blocks_, ")"));
      }
    }
    a.num_tokens += static_cast<int64_t>(s.token_ids.size());
    a.max_blocks = std::max<int>(a.max_blocks, static_cast<int>(need));
  }
  // A graph bakes the block-table stride in: every step it replays uses the one its context bound gives.
  if (graph_context > 0) a.max_blocks = std::max(a.max_blocks, (graph_context + block_size_ - 1) / block_size_);
  const int64_t T = a.num_tokens;
  const int S = a.num_seqs;
  const int nq = spec_.local_heads(), nk = spec_.local_kv_heads();
  const int64_t heads = nq + 2 * nk;
  a.num_sampled = 0;
  for (const SeqInput& s : input.seqs) a.num_sampled += s.sample ? s.num_logits : 0;

  size_t words = 0;
  auto segment = [&words](size_t n) {
    const size_t at = words;
    words += AlignWords(n);
    return at;
  };
  a.ids = segment(T);
  a.positions = segment(T);
  a.query_start = segment(S + 1);
  a.context_lens = segment(S);
  a.block_tables = segment(static_cast<size_t>(S) * a.max_blocks);
  a.slot_mapping = segment(T);
  a.split = segment(static_cast<size_t>(T * heads));
  a.sample_rows = segment(a.num_sampled);
  a.ints.assign(words, 0);
  int32_t* ints = a.ints.data();

  int64_t t = 0;
  int sampled = 0;
  a.max_query_len = 0;
  a.max_context_len = 0;
  ints[a.query_start] = 0;
  for (int i = 0; i < S; ++i) {
    const SeqInput& s = input.seqs[i];
    const int len = static_cast<int>(s.token_ids.size());
    const int ctx = s.start_position + len;
    a.max_query_len = std::max(a.max_query_len, len);
    a.max_context_len = std::max(a.max_context_len, ctx);
    ints[a.context_lens + i] = ctx;
    const int need = (ctx + block_size_ - 1) / block_size_;
    std::copy(s.block_table.begin(), s.block_table.begin() + need, ints + a.block_tables + size_t(i) * a.max_blocks);
    for (int j = 0; j < len; ++j, ++t) {
      const int pos = s.start_position + j;
      ints[a.ids + t] = s.token_ids[j];
      ints[a.positions + t] = pos;
      ints[a.slot_mapping + t] = s.block_table[pos / block_size_] * block_size_ + pos % block_size_;
    }
    ints[a.query_start + i + 1] = static_cast<int32_t>(t);
    if (s.sample) {
      for (int j = s.num_logits; j >= 1; --j) ints[a.sample_rows + sampled++] = static_cast<int32_t>(t - j);
    }
  }
  // The attention kernels' grid (decode splits) follows max_context_len; a graph's is its context bound.
  a.max_context_len = std::max(a.max_context_len, graph_context);
  // The fused qkv output [T, (nq + 2 nk) * head_dim] viewed as [T * (nq + 2 nk), head_dim] rows; gathering
  // rows in this order de-interleaves it into q [T, nq * hd] | k [T, nk * hd] | v [T, nk * hd].
  int32_t* split = ints + a.split;
  for (int64_t tok = 0; tok < T; ++tok) {
    for (int h = 0; h < nq; ++h) split[tok * nq + h] = static_cast<int32_t>(tok * heads + h);
    for (int h = 0; h < nk; ++h) {
      split[T * nq + tok * nk + h] = static_cast<int32_t>(tok * heads + nq + h);
      split[T * (nq + nk) + tok * nk + h] = static_cast<int32_t>(tok * heads + nq + nk + h);
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Complete(const char* name, float* data, int64_t count) {
  if (spec_.activation(name).state != ActivationState::kPartial || spec_.world_size() == 1) {
    return absl::OkStatus();
  }
  // Host collectives read memory directly: let queued ops finish first. NCCL is stream-ordered.
  if (!comm_->stream_ordered()) backend_->Synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status s = comm_->AllReduceSum(data, static_cast<size_t>(count));
  step_collective_seconds_ += SecondsSince(t0);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("all-reduce of ", name, ": ", s.message()));
  return absl::OkStatus();
}

absl::Status LlamaModel::Dump(int layer, const char* name, const float* data, int64_t rows, int64_t cols) {
  if (!dumper_.enabled()) return absl::OkStatus();
  return dumper_.Dump(*backend_, layer, name, data, rows, cols);
}

namespace {

// Decode batch sizes recorded as graphs (vLLM-style buckets): a step of S sequences replays the smallest
// bucket >= S, padded with sequences that write no KV and whose rows are dropped.
constexpr int kGraphBatches[] = {1, 2, 4, 8, 16, 24, 32, 48, 64};
// Candidates a graph's TopK computes: 1 for plain argmax, else the most any step may ask (then sliced).
int GraphTopK(int top_k, int vocab) { return top_k <= 1 ? top_k : std::min(kMaxStepTopK, vocab); }

}  // namespace

LlamaModel::GraphShape LlamaModel::GraphShapeFor(const StepPlanArrays& a, int top_k) const {
  GraphShape g;
  if (!options_.step_graphs || !backend_->supports_graphs() || spec_.world_size() != 1 || dumper_.enabled()) {
    return g;
  }
  // Decode steps only (one token per sequence), every sequence sampled.
  if (a.num_tokens != a.num_seqs || a.num_sampled != a.num_seqs) return g;
  for (int b : kGraphBatches) {
    if (b >= a.num_seqs) {
      g.batch = b;
      break;
    }
  }
  if (g.batch == 0) return g;
  // The attention grid follows max_context_len: a power of two >= 512 keeps the number of graphs small.
  const int max_pos = config().max_position_embeddings;
  g.context = 512;
  while (g.context < a.max_context_len) g.context *= 2;
  g.context = std::max(a.max_context_len, std::min(g.context, max_pos));
  g.top_k = GraphTopK(top_k, config().vocab_size);
  return g;
}

void LlamaModel::ReleaseGraphs() {
  for (const auto& [key, handle] : graphs_) {
    if (handle > 0) backend_->ReleaseGraph(handle);
  }
  graphs_.clear();
}

absl::Status LlamaModel::RunStep(const StepPlanArrays& a, int top_k) {
  const ModelConfig& c = config();
  const int64_t T = a.num_tokens;
  const int64_t H = c.hidden_size;
  const int hd = c.head_dim;
  const int nq = spec_.local_heads(), nk = spec_.local_kv_heads();
  const int64_t inter = spec_.local_intermediate();
  const float eps = c.rms_norm_eps;
  kernels::Backend& be = *backend_;

  const int32_t* dev = static_cast<const int32_t*>(ints_.ptr);
  kernels::AttentionBatch batch;
  batch.num_seqs = a.num_seqs;
  batch.num_tokens = static_cast<int>(T);
  batch.max_blocks_per_seq = a.max_blocks;
  batch.max_query_len = a.max_query_len;
  batch.max_context_len = a.max_context_len;
  batch.query_start = dev + a.query_start;
  batch.context_lens = dev + a.context_lens;
  batch.block_tables = dev + a.block_tables;
  batch.slot_mapping = dev + a.slot_mapping;
  batch.positions = dev + a.positions;

  float* x = static_cast<float*>(residual_.ptr);        // [T, H] mirrored residual stream
  float* h = static_cast<float*>(normed_.ptr);          // [T, H] normed input of the next matmul
  float* qkv = static_cast<float*>(qkv_.ptr);           // [T, (nq + 2 nk) * hd]
  float* q = static_cast<float*>(qkv_split_.ptr);       // [T, nq * hd]
  float* k = q + T * nq * hd;                           // [T, nk * hd]
  float* v = k + T * nk * hd;                           // [T, nk * hd]
  float* attn = static_cast<float*>(attn_.ptr);         // [T, nq * hd]
  float* part = static_cast<float*>(partial_.ptr);      // [T, H] partial sums of row-split matmuls
  float* gate_up = static_cast<float*>(gate_up_.ptr);   // [T, 2 * inter / tp]
  float* act = static_cast<float*>(act_.ptr);           // [T, inter / tp]
  const int64_t qkv_cols = spec_.local_qkv_size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  be.Embedding(dev + a.ids, T, weights_->embed(), spec_.vocab_begin(), x);
  TP_RETURN_IF_ERROR(Complete("embed", x, T * H));
  TP_RETURN_IF_ERROR(Dump(-1, "embed", x, T, H));
  be.RmsNorm(x, T, weights_->layer(0).input_norm, eps, h);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = weights_->layer(l);
    TP_RETURN_IF_ERROR(Dump(l, "attn_norm", h, T, H));
    be.Matmul(h, T, w.qkv, qkv);
    TP_RETURN_IF_ERROR(Dump(l, "qkv", qkv, T, qkv_cols));
    be.GatherRows(qkv, dev + a.split, T * (nq + 2 * nk), hd, q);
    be.RopeWriteKv(q, k, v, nq, nk, hd, c.rope_theta, static_cast<const float*>(rope_table_.ptr), rope_positions_,
                   *kv_, l, batch);
    TP_RETURN_IF_ERROR(Dump(l, "q", q, T, int64_t{nq} * hd));
    TP_RETURN_IF_ERROR(Dump(l, "k", k, T, int64_t{nk} * hd));
    TP_RETURN_IF_ERROR(Dump(l, "v", v, T, int64_t{nk} * hd));
    be.Attention(*kv_, l, q, batch, nq, scale, attn);
    TP_RETURN_IF_ERROR(Dump(l, "attn", attn, T, int64_t{nq} * hd));
    be.Matmul(attn, T, w.o_proj, part);
    TP_RETURN_IF_ERROR(Complete("o_proj", part, T * H));
    TP_RETURN_IF_ERROR(Dump(l, "o_proj", part, T, H));
    be.AddRmsNorm(x, part, T, w.post_norm, eps, h);
    TP_RETURN_IF_ERROR(Dump(l, "mlp_norm", h, T, H));
    be.Matmul(h, T, w.gate_up, gate_up);
    TP_RETURN_IF_ERROR(Dump(l, "gate_up", gate_up, T, 2 * inter));
    be.SiluMul(gate_up, T, inter, act);
    TP_RETURN_IF_ERROR(Dump(l, "act", act, T, inter));
    be.Matmul(act, T, w.down, part);
    TP_RETURN_IF_ERROR(Complete("down", part, T * H));
    TP_RETURN_IF_ERROR(Dump(l, "down", part, T, H));
    // The residual add closes the layer; its norm is the next layer's input norm (or the final norm).
    const kernels::WeightView& next_norm =
        l + 1 < c.num_layers ? weights_->layer(l + 1).input_norm : weights_->final_norm();
    be.AddRmsNorm(x, part, T, next_norm, eps, h);
    TP_RETURN_IF_ERROR(Dump(l, "residual", x, T, H));
  }
  TP_RETURN_IF_ERROR(Dump(-1, "final_norm", h, T, H));

  const int64_t ns = a.num_sampled;
  gathered_ = nullptr;
  if (ns == 0) return absl::OkStatus();
  const int64_t lv = spec_.local_vocab();
  float* sampled = static_cast<float*>(sampled_.ptr);
  float* logits_local = static_cast<float*>(logits_local_.ptr);
  be.GatherRows(h, dev + a.sample_rows, ns, H, sampled);
  TP_RETURN_IF_ERROR(Dump(-1, "sampled", sampled, ns, H));
  be.Matmul(sampled, ns, weights_->lm_head(), logits_local);
  TP_RETURN_IF_ERROR(Dump(-1, "logits_local", logits_local, ns, lv));
  gathered_ = logits_local;  // [tp, ns, lv]
  if (spec_.world_size() > 1) {
    if (!comm_->stream_ordered()) be.Synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = comm_->AllGather(logits_local, static_cast<size_t>(ns * lv), static_cast<float*>(logits_all_.ptr));
    step_collective_seconds_ += SecondsSince(t0);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("all-gather of logits: ", s.message()));
    gathered_ = static_cast<const float*>(logits_all_.ptr);
  }
  if (top_k > 0 && (spec_.rank() == 0 || options_.logits_on_every_rank)) {
    int32_t* top_ids = static_cast<int32_t*>(top_.ptr);
    float* top_logits = reinterpret_cast<float*>(top_ids + ns * top_k);
    be.TopK(gathered_, ns, spec_.world_size(), lv, c.vocab_size, top_k, top_ids, top_logits, top_logits + ns * top_k);
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::CollectOutput(int64_t rows, int64_t ns, int computed_top_k, int top_k, StepOutput& out) {
  if (ns == 0 || !(spec_.rank() == 0 || options_.logits_on_every_rank)) return absl::OkStatus();
  kernels::Backend& be = *backend_;
  if (top_k > 0) {
    // Only the candidates come back: [rows, kc] ids | [rows, kc] logits | [rows] lse, one download; the
    // first ns rows and top_k columns are this step's.
    const int kc = computed_top_k;
    std::vector<int32_t> host(static_cast<size_t>(rows * (2 * kc + 1)));
    be.Download(host.data(), top_.ptr, host.size() * sizeof(int32_t));
    const float* vals = reinterpret_cast<const float*>(host.data() + rows * kc);
    out.top_k = top_k;
    out.top_ids.resize(static_cast<size_t>(ns * top_k));
    out.top_logits.resize(static_cast<size_t>(ns * top_k));
    out.lse.assign(vals + rows * kc, vals + rows * kc + ns);
    for (int64_t r = 0; r < ns; ++r) {
      std::copy_n(host.data() + r * kc, top_k, out.top_ids.data() + r * top_k);
      std::copy_n(vals + r * kc, top_k, out.top_logits.data() + r * top_k);
    }
    return absl::OkStatus();
  }
  const int tp = spec_.world_size();
  const int64_t lv = spec_.local_vocab();
  const int64_t V = config().vocab_size;
  // [tp, rows, lv]; at tp = 1 only the first ns rows are read.
  host_logits_.resize(static_cast<size_t>(tp == 1 ? ns * lv : tp * rows * lv));
  be.Download(host_logits_.data(), gathered_, host_logits_.size() * sizeof(float));
  // [tp, rows, lv] -> [ns, V]: rank r's slice holds ids [r * lv, r * lv + lv); ids >= V are padding.
  out.logits.resize(static_cast<size_t>(ns * V));
  for (int r = 0; r < tp; ++r) {
    const int64_t begin = r * lv;
    const int64_t n = std::min<int64_t>(lv, V - begin);
    if (n <= 0) continue;
    for (int64_t s = 0; s < ns; ++s) {
      std::copy_n(host_logits_.data() + (r * rows + s) * lv, n, out.logits.data() + s * V + begin);
    }
  }
  return dumper_.DumpHost(-1, "logits", out.logits.data(), ns, V);
}

absl::Status LlamaModel::ForwardGraph(const StepInput& input, const GraphShape& g, StepOutput& out) {
  kernels::Backend& be = *backend_;
  const int S = static_cast<int>(input.seqs.size());
  // Padding sequences: token 0 at position 0 of block 0, no KV write (slot -1), rows dropped.
  StepInput padded;
  padded.seqs = input.seqs;
  for (int i = S; i < g.batch; ++i) {
    SeqInput pad;
    pad.token_ids = {0};
    pad.block_table = {0};
    pad.sample = true;
    padded.seqs.push_back(std::move(pad));
  }
  StepPlanArrays a;
  TP_RETURN_IF_ERROR(BuildArrays(padded, a, g.context));
  for (int t = S; t < g.batch; ++t) a.ints[a.slot_mapping + t] = -1;
  EnsureScratch(g.batch, g.batch, a.ints.size());  // releases the graphs when a buffer moves
  be.Upload(ints_.ptr, a.ints.data(), a.ints.size() * sizeof(int32_t));

  const auto key = std::make_tuple(g.batch, g.context, g.top_k);
  auto it = graphs_.find(key);
  const bool tried = it != graphs_.end();
  if (tried && it->second > 0) {
    absl::Status st = be.ReplayGraph(it->second);
    if (st.ok()) {
      gathered_ = static_cast<const float*>(logits_local_.ptr);
      ++graph_replays_;
      return CollectOutput(g.batch, S, g.top_k, input.top_k, out);
    }
    if (st.code() != absl::StatusCode::kNotFound) return st;
    graphs_.erase(it);  // the backend moved a scratch buffer: record again below
  }
  // Run directly (this step's result, and every scratch buffer grown to this shape), then record once.
  TP_RETURN_IF_ERROR(RunStep(a, g.top_k));
  TP_RETURN_IF_ERROR(CollectOutput(g.batch, S, g.top_k, input.top_k, out));
  if (tried && graphs_.count(key) > 0) return absl::OkStatus();  // known not to record
  be.Synchronize();
  int64_t handle = 0;
  if (absl::Status b = be.BeginGraph(); b.ok()) {
    absl::Status run = RunStep(a, g.top_k);
    absl::StatusOr<int64_t> h = be.EndGraph();
    if (!run.ok()) return run;
    if (h.ok()) {
      handle = *h;
    } else {
      TP_LOG(WARNING) << "decode steps of " << g.batch << " sequences run without a graph: " << h.status();
    }
  } else {
    TP_LOG(WARNING) << "decode steps of " << g.batch << " sequences run without a graph: " << b;
  }
  graphs_[key] = handle;
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> LlamaModel::Forward(const StepInput& input) {
  const auto t_start = std::chrono::steady_clock::now();
  if (kv_ == nullptr) return absl::FailedPreconditionError("Forward before AllocateKv: no KV cache");
  if (input.top_k < 0 || input.top_k > std::min(kMaxStepTopK, config().vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", input.top_k, " is outside [0, ",
                                                   std::min(kMaxStepTopK, config().vocab_size), "]"));
  }
  StepPlanArrays a;
  TP_RETURN_IF_ERROR(BuildArrays(input, a));
  StepOutput out;
  out.vocab_size = config().vocab_size;
  out.num_sampled = a.num_sampled;
  if (a.num_tokens == 0) return out;
  step_collective_seconds_ = 0;
  TP_RETURN_IF_ERROR(dumper_.BeginStep(step_));

  const GraphShape g = GraphShapeFor(a, input.top_k);
  if (g.batch > 0) {
    TP_RETURN_IF_ERROR(ForwardGraph(input, g, out));
  } else {
    EnsureScratch(a.num_tokens, a.num_sampled, a.ints.size());
    backend_->Upload(ints_.ptr, a.ints.data(), a.ints.size() * sizeof(int32_t));
    TP_RETURN_IF_ERROR(RunStep(a, input.top_k));
    TP_RETURN_IF_ERROR(CollectOutput(a.num_sampled, a.num_sampled, input.top_k, input.top_k, out));
  }
  backend_->Synchronize();
  // A stream-ordered collective that a watchdog aborted (lost peer, deadline) left garbage behind.
  TP_RETURN_IF_ERROR(comm_->AsyncError());
  ++step_;
  out.allreduce_seconds = step_collective_seconds_;
  total_collective_seconds_ += step_collective_seconds_;
  out.forward_seconds = SecondsSince(t_start);
  return out;
}

}  // namespace tpserve::model
