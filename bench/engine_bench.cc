// Engine micro-benchmark (in the spirit of TGI's text-generation-benchmark): prefill latency per prompt
// length and decode step latency / tokens/s per batch size at a fixed context, straight on LlamaModel
// (no gRPC, no scheduler), so the figures are the floor the server can reach. Ranks are threads of this
// process (CPU: Gloo on 127.0.0.1; CUDA: NCCL, rank r on cuda:K+r).
//   engine-bench --device cuda:0 --preset llama-2-13b --random-weights
//   engine-bench --preset llama-2-13b --num-layers 2 --random-weights --tp 2 --prefill-lens 128
//       --batch-sizes 1,8 --context-len 256 --json /tmp/e.json
//   engine-bench --model /work/shared/models/stories260K
//   engine-bench --preset bench-0.9b --random-weights --prefill-lens "" --batch-sizes 1,16 --verify-tokens 1,2,4,8
//       (the cost of a speculative verify step, k + 1 tokens per sequence, beside a plain decode step)
//   engine-bench --model DIR --quantization int8 [--quantize-lm-head]   # int8 weights, as serve's flags
// Every decoding sequence has its own prefilled context (context-len tokens, rounded down to whole KV
// blocks) in its own blocks, as distinct requests do: on a GPU a context shared by the whole batch stays in
// L2 and flatters attention. --shared-context makes them share one context (as a prefix cache would), so
// a batch of 64 at context 512 costs 512 + 64 * steps KV slots instead of 64 * (512 + steps).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "bench/dashed_flags.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/model_config.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"
#include "worker/model/llama_model.h"
#include "tools/model/synthetic_model.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json + safetensors/bin); else --random-weights");
ABSL_FLAG(bool, random_weights, false, "seeded random weights of --preset's shape (no checkpoint)");
ABSL_FLAG(std::string, preset, "llama-2-13b", "shape for --random-weights: tiny, bench-0.9b or llama-2-13b");
ABSL_FLAG(int, num_layers, -1, "override the layer count (-1 keeps the preset's / checkpoint's)");
ABSL_FLAG(std::string, dtype, "bfloat16", "random weights' dtype: bfloat16, float16 or float32");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda:K (rank r uses cuda:K+r)");
ABSL_FLAG(std::string, quantization, "none",
          "with --model: none or int8 (weights quantized while loading, as `tpserve serve --quantization`)");
ABSL_FLAG(bool, quantize_lm_head, false, "with --quantization int8: lm_head in int8 too");
ABSL_FLAG(int, tp, 1, "tensor-parallel ranks (threads of this process)");
ABSL_FLAG(int, threads, 0, "CPU kernel threads per rank (0 = cores / tp)");
ABSL_FLAG(std::string, prefill_lens, "512,2048", "prompt lengths to time as one prefill step (\"\" = none)");
ABSL_FLAG(std::string, batch_sizes, "1,8,32,64", "decode batch sizes (\"\" = none)");
ABSL_FLAG(int, context_len, 512, "tokens already in the KV cache of every decoding sequence");
ABSL_FLAG(bool, shared_context, false,
          "decoding sequences share one prefilled context (a prefix cache hit) instead of one context each");
ABSL_FLAG(int, decode_steps, 16, "timed decode steps per batch size");
ABSL_FLAG(std::string, verify_tokens, "",
          "speculative verify steps to time beside decode, e.g. 1,2,4,8: each sequence of each batch size runs "
          "k + 1 query tokens with logits for all of them, as a step verifying k proposals does (\"\" = none)");
ABSL_FLAG(int, prefill_runs, 3, "timed prefill runs per length");
ABSL_FLAG(int, warmup, 2, "untimed steps before each measurement");
ABSL_FLAG(int, block_size, 16, "KV block size");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(int, idle_us, 0,
          "sleep this long before each step (untimed), as a server idles between steps while the plan and the "
          "sampled tokens cross gRPC; shows what thread-pool wake-ups after an idle gap cost");

namespace {

using tpserve::ModelConfig;
namespace model = tpserve::model;

// Latency samples of one configuration (rank 0's view; every rank runs the same steps in lockstep).
struct Series {
  std::string kind;  // "prefill" | "decode" | "verify"
  int batch = 1;
  int tokens_per_seq = 0;  // prefill: prompt length; decode: 1; verify: k + 1
  int context = 0;         // decode: tokens in the cache before the first timed step
  std::vector<double> wall_s, comm_s;
};

struct RankResult {
  absl::Status status;
  std::string device;
  ModelConfig config;
  size_t weight_bytes = 0, kv_bytes = 0;
  double load_s = 0;
  std::vector<Series> series;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}
double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

absl::StatusOr<std::vector<int>> ParseInts(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", part, "' is not a positive integer (expected e.g. 1,8,32)"));
    }
    out.push_back(v);
  }
  return out;
}

// "cpu" -> -1; "cuda" / "cuda:K" -> K.
absl::StatusOr<int> ParseDevice(const std::string& d) {
  if (d == "cpu") return -1;
  if (d == "cuda") return 0;
  int k = 0;
  if (absl::StartsWith(d, "cuda:") && absl::SimpleAtoi(d.substr(5), &k) && k >= 0) return k;
  return absl::InvalidArgumentError(absl::StrCat("--device: '", d, "' is not cpu or cuda:K"));
}

struct Plan {
  int cuda_base = -1;
  std::vector<int> prefill_lens, batch_sizes, verify_tokens;
  int context_len = 0, decode_steps = 0, prefill_runs = 0, warmup = 0, block_size = 16, threads = 0;
  bool shared_context = false;
  tpserve::DType dtype = tpserve::DType::kBF16;
  model::LlamaModelOptions model_options;  // --quantization, --quantize-lm-head (checkpoints only)
};

// Times one Forward; on rank 0 appends wall and collective seconds to `s`.
absl::Status TimedStep(model::LlamaModel& m, const model::StepInput& in, Series* s) {
  if (const int idle = absl::GetFlag(FLAGS_idle_us); idle > 0) std::this_thread::sleep_for(std::chrono::microseconds(idle));
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<model::StepOutput> r = m.Forward(in);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok()) return r.status();
  if (s != nullptr) {
    s->wall_s.push_back(wall);
    s->comm_s.push_back(r->allreduce_seconds);
  }
  return absl::OkStatus();
}

int32_t TokenFor(const ModelConfig& c, int a, int b) { return 1 + (a * 131 + b * 17) % (c.vocab_size - 1); }

absl::Status RunRank(int rank, int tp, const Plan& plan, tpserve::comm::Store& store, RankResult& out) {
  absl::StatusOr<std::unique_ptr<tpserve::kernels::Backend>> backend;
  if (plan.cuda_base >= 0) {
    backend = tpserve::kernels::CreateCudaBackend(plan.cuda_base + rank);
  } else {
    tpserve::kernels::CpuBackendOptions o;
    o.threads = plan.threads > 0 ? plan.threads
                                 : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / tp);
    backend = tpserve::kernels::CreateCpuBackend(o);
  }
  if (!backend.ok()) return backend.status();
  out.device = (*backend)->name();
  absl::StatusOr<std::unique_ptr<tpserve::comm::Communicator>> comm;
  if (tp == 1) {
    comm = tpserve::comm::CreateLocalCommunicator();
  } else if (plan.cuda_base >= 0) {
    tpserve::comm::NcclOptions o;
    o.rank = rank, o.world_size = tp, o.device = plan.cuda_base + rank, o.prefix = "engine-bench/";
    o.stream = (*backend)->native_stream();
    comm = tpserve::comm::CreateNcclCommunicator(o, store);
  } else {
    tpserve::comm::GlooOptions o;
    o.rank = rank, o.world_size = tp, o.host = "127.0.0.1", o.prefix = "engine-bench/";
    comm = tpserve::comm::CreateGlooCommunicator(o, store);
  }
  if (!comm.ok()) return comm.status();

  const auto t_load = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<model::LlamaModel>> made;
  const std::string dir = absl::GetFlag(FLAGS_model);
  const int num_layers = absl::GetFlag(FLAGS_num_layers);
  if (!dir.empty()) {
    absl::StatusOr<ModelConfig> config = tpserve::LoadModelConfig(dir);
    if (!config.ok()) return config.status();
    if (num_layers > 0 && num_layers != config->num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("--num-layers ", num_layers, " differs from ", dir,
                                                     "'s ", config->num_layers, "; make a shorter model with "
                                                     "`tpserve make-model --num-layers` instead"));
    }
    absl::StatusOr<model::ShardSpec> spec = model::ShardSpec::Create(*config, rank, tp);
    if (!spec.ok()) return spec.status();
    absl::StatusOr<std::unique_ptr<tpserve::checkpoint::Checkpoint>> ckpt =
        tpserve::checkpoint::Checkpoint::Open(dir);
    if (!ckpt.ok()) return ckpt.status();
    made = model::LlamaModel::Load(**ckpt, *spec, backend->get(), comm->get(), plan.model_options);
  } else {
    absl::StatusOr<ModelConfig> config = model::PresetConfig(absl::GetFlag(FLAGS_preset));
    if (!config.ok()) return config.status();
    if (num_layers > 0) config->num_layers = num_layers;
    absl::StatusOr<model::ShardSpec> spec = model::ShardSpec::Create(*config, rank, tp);
    if (!spec.ok()) return spec.status();
    model::RandomWeightOptions wo;
    wo.seed = 1;
    wo.dtype = plan.dtype;
    made = model::LlamaModel::CreateRandom(*spec, backend->get(), comm->get(), wo, model::LlamaModelOptions{});
  }
  if (!made.ok()) return made.status();
  model::LlamaModel& m = **made;
  out.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  out.weight_bytes = m.weight_bytes();
  out.config = m.config();
  const ModelConfig& c = out.config;

  // KV layout. Shared context: blocks [0, prefix_blocks) hold it; sequence i owns own_blocks after it.
  // Separate contexts: sequence i owns blocks [i * per_seq, (i + 1) * per_seq), its context first.
  const int bs = plan.block_size;
  int max_prefill = 0, max_batch = 0;
  for (int l : plan.prefill_lens) max_prefill = std::max(max_prefill, l);
  for (int b : plan.batch_sizes) max_batch = std::max(max_batch, b);
  const int prefix_blocks = plan.batch_sizes.empty() ? 0 : plan.context_len / bs;
  const int context = prefix_blocks * bs;
  int max_verify = 0;
  for (int k : plan.verify_tokens) max_verify = std::max(max_verify, k);
  const int own_blocks = ((plan.warmup + plan.decode_steps) * (max_verify + 1) + bs - 1) / bs;
  const int per_seq = prefix_blocks + own_blocks;
  if (std::max(max_prefill, context + (plan.warmup + plan.decode_steps) * (max_verify + 1)) >
      c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--prefill-lens / --context-len + steps exceed the model's ",
                                                   c.max_position_embeddings, " positions"));
  }
  const int num_blocks = std::max((max_prefill + bs - 1) / bs, plan.shared_context
                                                                    ? prefix_blocks + max_batch * own_blocks
                                                                    : max_batch * per_seq);
  if (absl::Status s = m.AllocateKv(num_blocks, bs); !s.ok()) return s;
  out.kv_bytes = m.KvBlockBytes(bs) * num_blocks;
  // Contexts are prefilled untimed, several sequences per step up to ~2048 tokens.
  const int contexts = context > 0 ? (plan.shared_context ? 1 : max_batch) : 0;
  const int contexts_per_step = context > 0 ? std::max(1, 2048 / context) : 1;
  {
    // Every buffer the largest step needs, before the first collective (ranks share this process).
    const int64_t tokens =
        std::max({max_prefill, std::min(contexts, contexts_per_step) * context, max_batch * (max_verify + 1), 1});
    const int64_t seqs = std::max({max_batch * (max_verify + 1), contexts_per_step, 1});
    m.ReserveScratch(tokens, seqs, static_cast<size_t>(8 * tokens + seqs * (num_blocks + 4) + 1024));
  }

  auto prefill_input = [&](int len, int salt) {
    model::StepInput in;
    model::SeqInput q;
    q.seq_id = 0;
    for (int t = 0; t < len; ++t) q.token_ids.push_back(TokenFor(c, salt, t));
    for (int b = 0; b < (len + bs - 1) / bs; ++b) q.block_table.push_back(b);
    q.sample = true;
    in.seqs.push_back(std::move(q));
    return in;
  };
  for (int len : plan.prefill_lens) {
    Series s;
    s.kind = "prefill", s.tokens_per_seq = len;
    for (int k = 0; k < plan.warmup + plan.prefill_runs; ++k) {
      // Warm-up runs are shorter (the same scratch growth, less time) unless the length is small.
      const bool timed = k >= plan.warmup;
      if (absl::Status st = TimedStep(m, prefill_input(timed ? len : std::min(len, 64), k), timed ? &s : nullptr);
          !st.ok()) {
        return st;
      }
    }
    out.series.push_back(std::move(s));
  }
  if (plan.batch_sizes.empty()) return absl::OkStatus();
  // Sequence i's blocks: its context's, then those its new tokens go to.
  auto table_of = [&](int i) {
    std::vector<int32_t> t;
    if (plan.shared_context) {
      for (int b = 0; b < prefix_blocks; ++b) t.push_back(b);
      for (int b = 0; b < own_blocks; ++b) t.push_back(prefix_blocks + i * own_blocks + b);
    } else {
      for (int b = 0; b < per_seq; ++b) t.push_back(i * per_seq + b);
    }
    return t;
  };
  // The contexts are written once, untimed (they are more prefills): one shared, or one per sequence
  // with distinct tokens, several sequences per step up to ~2048 tokens.
  if (context > 0) {
    for (int first = 0; first < contexts; first += contexts_per_step) {
      model::StepInput in;
      for (int i = first; i < std::min(contexts, first + contexts_per_step); ++i) {
        model::SeqInput q;
        q.seq_id = i;
        for (int t = 0; t < context; ++t) q.token_ids.push_back(TokenFor(c, 999 + i, t));
        q.block_table = table_of(i);
        in.seqs.push_back(std::move(q));
      }
      if (absl::Status st = TimedStep(m, in, nullptr); !st.ok()) return st;
    }
  }
  for (int batch : plan.batch_sizes) {
    Series s;
    s.kind = "decode", s.batch = batch, s.tokens_per_seq = 1, s.context = context;
    model::StepInput in;
    for (int i = 0; i < batch; ++i) {
      model::SeqInput q;
      q.seq_id = i;
      q.block_table = table_of(i);
      q.sample = true;
      in.seqs.push_back(std::move(q));
    }
    for (int k = 0; k < plan.warmup + plan.decode_steps; ++k) {
      for (int i = 0; i < batch; ++i) {
        in.seqs[i].token_ids = {TokenFor(c, i, k)};
        in.seqs[i].start_position = context + k;
      }
      if (absl::Status st = TimedStep(m, in, k >= plan.warmup ? &s : nullptr); !st.ok()) return st;
    }
    out.series.push_back(std::move(s));
    // Verify steps at the same batch size and context: the last token plus k proposals per sequence, logits
    // for each (what the worker computes for worker.v1 SeqStep.num_draft_tokens = k).
    for (int vk : plan.verify_tokens) {
      Series v;
      v.kind = "verify", v.batch = batch, v.tokens_per_seq = vk + 1, v.context = context;
      for (int k = 0; k < plan.warmup + plan.decode_steps; ++k) {
        for (int i = 0; i < batch; ++i) {
          in.seqs[i].token_ids.clear();
          for (int t = 0; t <= vk; ++t) in.seqs[i].token_ids.push_back(TokenFor(c, i, k * (vk + 1) + t));
          in.seqs[i].start_position = context + k * (vk + 1);
          in.seqs[i].num_logits = vk + 1;
        }
        if (absl::Status st = TimedStep(m, in, k >= plan.warmup ? &v : nullptr); !st.ok()) return st;
      }
      for (auto& q : in.seqs) q.num_logits = 1;
      out.series.push_back(std::move(v));
    }
  }
  return absl::OkStatus();
}

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) o += ch;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  tpserve::bench::ParseDashedCommandLine(argc, argv);
  Plan plan;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "engine-bench: %s\n", s.ToString().c_str());
    return 2;
  };
  absl::StatusOr<int> dev = ParseDevice(absl::GetFlag(FLAGS_device));
  if (!dev.ok()) return fail(dev.status());
  plan.cuda_base = *dev;
  absl::StatusOr<std::vector<int>> lens = ParseInts("prefill-lens", absl::GetFlag(FLAGS_prefill_lens));
  if (!lens.ok()) return fail(lens.status());
  absl::StatusOr<std::vector<int>> batches = ParseInts("batch-sizes", absl::GetFlag(FLAGS_batch_sizes));
  if (!batches.ok()) return fail(batches.status());
  absl::StatusOr<std::vector<int>> verify = ParseInts("verify-tokens", absl::GetFlag(FLAGS_verify_tokens));
  if (!verify.ok()) return fail(verify.status());
  plan.verify_tokens = *verify;
  absl::StatusOr<tpserve::DType> dtype = tpserve::ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return fail(dtype.status());
  plan.prefill_lens = *lens, plan.batch_sizes = *batches, plan.dtype = *dtype;
  plan.context_len = absl::GetFlag(FLAGS_context_len), plan.decode_steps = absl::GetFlag(FLAGS_decode_steps);
  plan.prefill_runs = absl::GetFlag(FLAGS_prefill_runs), plan.warmup = absl::GetFlag(FLAGS_warmup);
  plan.block_size = absl::GetFlag(FLAGS_block_size), plan.threads = absl::GetFlag(FLAGS_threads);
  plan.shared_context = absl::GetFlag(FLAGS_shared_context);
  absl::StatusOr<model::WeightQuantization> quantization =
      model::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  if (!quantization.ok()) return fail(quantization.status());
  plan.model_options.quantization = *quantization;
  plan.model_options.quantize_lm_head = absl::GetFlag(FLAGS_quantize_lm_head);
  if (plan.model_options.quantize_lm_head && *quantization != model::WeightQuantization::kInt8) {
    return fail(absl::InvalidArgumentError("--quantize-lm-head needs --quantization int8"));
  }
  if (*quantization != model::WeightQuantization::kNone && absl::GetFlag(FLAGS_model).empty()) {
    return fail(absl::InvalidArgumentError("--quantization needs --model (a checkpoint is quantized as it loads)"));
  }
  const int tp = absl::GetFlag(FLAGS_tp);
  if (tp < 1 || plan.block_size < 1 || plan.context_len < 0 || plan.decode_steps < 1 || plan.prefill_runs < 1 ||
      plan.warmup < 0) {
    return fail(absl::InvalidArgumentError(
        "--tp, --block-size, --decode-steps and --prefill-runs must be >= 1; --context-len, --warmup >= 0"));
  }
  if (absl::GetFlag(FLAGS_model).empty() && !absl::GetFlag(FLAGS_random_weights)) {
    return fail(absl::InvalidArgumentError("give --model DIR or --random-weights (with --preset)"));
  }

  tpserve::comm::MemoryStore store;
  std::vector<RankResult> results(tp);
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] { results[r].status = RunRank(r, tp, plan, store, results[r]); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < tp; ++r) {
    if (!results[r].status.ok()) {
      std::fprintf(stderr, "engine-bench: rank %d: %s\n", r, results[r].status.ToString().c_str());
      return 1;
    }
  }
  const RankResult& r0 = results[0];
  const ModelConfig& c = r0.config;
  const std::string source = absl::GetFlag(FLAGS_model).empty()
                                 ? absl::StrCat("random ", absl::GetFlag(FLAGS_preset), " ", DTypeName(plan.dtype))
                                 : absl::GetFlag(FLAGS_model) +
                                       (plan.model_options.quantization == model::WeightQuantization::kInt8
                                            ? (plan.model_options.quantize_lm_head ? " (int8+lm_head)" : " (int8)")
                                            : "");
  std::printf("engine-bench: %s, tp %d, %s (%d layers, hidden %d, vocab %d), %.2f GiB weights + %.2f GiB KV per "
              "rank, load %.1f s, %s\n",
              r0.device.c_str(), tp, source.c_str(), c.num_layers, c.hidden_size, c.vocab_size,
              r0.weight_bytes / double(1 << 30), r0.kv_bytes / double(1 << 30), r0.load_s,
              plan.shared_context ? "one context shared by every decoding sequence" : "one context per sequence");
  std::printf("%-8s %6s %8s %8s %10s %10s %10s %12s %7s\n", "phase", "batch", "tokens", "context", "p50 ms",
              "p90 ms", "min ms", "tok/s(p50)", "comm%");
  std::string json_rows;
  for (const Series& s : r0.series) {
    const double p50 = Median(s.wall_s), p90 = Quantile(s.wall_s, 0.9);
    const double mn = s.wall_s.empty() ? 0 : *std::min_element(s.wall_s.begin(), s.wall_s.end());
    double wall = 0, comm = 0;
    for (double x : s.wall_s) wall += x;
    for (double x : s.comm_s) comm += x;
    const double tokens = static_cast<double>(s.batch) * s.tokens_per_seq;
    const double tps = p50 > 0 ? tokens / p50 : 0;
    const double comm_pct = wall > 0 ? 100.0 * comm / wall : 0;
    std::printf("%-8s %6d %8d %8d %10.2f %10.2f %10.2f %12.1f %6.1f%%\n", s.kind.c_str(), s.batch,
                s.tokens_per_seq, s.context, p50 * 1e3, p90 * 1e3, mn * 1e3, tps, comm_pct);
    absl::StrAppend(&json_rows, json_rows.empty() ? "" : ",\n", "    {\"phase\": \"", s.kind,
                    "\", \"batch\": ", s.batch, ", \"tokens_per_seq\": ", s.tokens_per_seq, ", \"context\": ",
                    s.context, ", \"runs\": ", s.wall_s.size(), ", \"p50_ms\": ", p50 * 1e3, ", \"p90_ms\": ",
                    p90 * 1e3, ", \"min_ms\": ", mn * 1e3, ", \"tokens_per_s\": ", tps,
                    ", \"collective_fraction\": ", comm_pct / 100, "}");
  }
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\n  \"device\": \"" << JsonEscape(r0.device) << "\",\n  \"tp\": " << tp << ",\n  \"source\": \""
      << JsonEscape(source) << "\",\n  \"num_layers\": " << c.num_layers << ",\n  \"hidden_size\": "
      << c.hidden_size << ",\n  \"weight_bytes_per_rank\": " << r0.weight_bytes
      << ",\n  \"kv_bytes_per_rank\": " << r0.kv_bytes << ",\n  \"load_seconds\": " << r0.load_s
      << ",\n  \"results\": [\n"
      << json_rows << "\n  ]\n}\n";
    if (!f) {
      std::fprintf(stderr, "engine-bench: could not write --json %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}
