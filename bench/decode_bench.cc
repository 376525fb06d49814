// Forward-pass throughput of LlamaModel with seeded random weights (no checkpoint needed), so full-size
// shapes (Llama-2-13B) can be measured on any backend: one prefill step of batch x prompt tokens, then
// decode steps of `batch` tokens. Ranks run as threads (host backends: Gloo on 127.0.0.1; CUDA: NCCL, one
// device per rank). Prints rank 0's timings and the share spent in collectives.
//   decode-bench --backend=cuda --preset=13b --batch=8 --prompt=512 --steps=64
//   decode-bench --backend=cpu --preset=13b --layers=2 --tp=2 --batch=1 --prompt=16 --steps=8
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/model_config.h"
#include "kernels/backend.h"
#include "worker/comm/communicator.h"
#include "worker/comm/memory_store.h"
#include "worker/model/llama_model.h"

ABSL_FLAG(std::string, backend, "cpu", "cpu, reference or cuda");
ABSL_FLAG(int, tp, 1, "tensor-parallel ranks (threads of this process)");
ABSL_FLAG(std::string, preset, "13b", "model shape: 13b, 7b or small");
ABSL_FLAG(int, layers, 0, "override the number of layers (0 = the preset's)");
ABSL_FLAG(std::string, dtype, "bfloat16", "weight dtype: bfloat16, float16 or float32");
ABSL_FLAG(int, batch, 1, "sequences per step");
ABSL_FLAG(int, prompt, 128, "prompt tokens per sequence (one prefill step)");
ABSL_FLAG(int, steps, 32, "decode steps");
ABSL_FLAG(int, block_size, 16, "KV block size");
ABSL_FLAG(int, threads, 0, "CPU backend threads per rank (0 = hardware concurrency / tp)");

namespace {

using tpserve::ModelConfig;
namespace model = tpserve::model;

ModelConfig Preset(const std::string& name) {
  ModelConfig c;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5f;
  c.vocab_size = 32000;
  if (name == "7b") {
    c.hidden_size = 4096, c.intermediate_size = 11008, c.num_layers = 32, c.num_heads = 32, c.num_kv_heads = 32;
    c.head_dim = 128;
  } else if (name == "small") {
    c.hidden_size = 512, c.intermediate_size = 1376, c.num_layers = 8, c.num_heads = 8, c.num_kv_heads = 8;
    c.head_dim = 64;
  } else {  // Llama-2-13B (Tulu V2.5 13B)
    c.hidden_size = 5120, c.intermediate_size = 13824, c.num_layers = 40, c.num_heads = 40, c.num_kv_heads = 40;
    c.head_dim = 128;
  }
  return c;
}

struct RankResult {
  absl::Status status;
  std::string device;
  size_t weight_bytes = 0;
  double load_s = 0, prefill_s = 0, prefill_comm_s = 0;
  std::vector<double> decode_s;
  double decode_comm_s = 0;
};

void RunRank(int rank, int tp, const ModelConfig& config, tpserve::comm::Store& store, RankResult& out) {
  const std::string kind = absl::GetFlag(FLAGS_backend);
  absl::StatusOr<std::unique_ptr<tpserve::kernels::Backend>> backend;
  if (kind == "cuda") {
    backend = tpserve::kernels::CreateCudaBackend(rank);
  } else if (kind == "reference") {
    backend = tpserve::kernels::CreateReferenceBackend();
  } else {
    tpserve::kernels::CpuBackendOptions o;
    o.threads = absl::GetFlag(FLAGS_threads) > 0
                    ? absl::GetFlag(FLAGS_threads)
                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / tp);
    backend = tpserve::kernels::CreateCpuBackend(o);
  }
  if (!backend.ok()) {
    out.status = backend.status();
    return;
  }
  out.device = (*backend)->name();
  absl::StatusOr<std::unique_ptr<tpserve::comm::Communicator>> comm;
  if (tp == 1) {
    comm = tpserve::comm::CreateLocalCommunicator();
  } else if (kind == "cuda") {
    tpserve::comm::NcclOptions o;
    o.rank = rank, o.world_size = tp, o.device = rank, o.prefix = "bench/";
    o.stream = (*backend)->native_stream();
    comm = tpserve::comm::CreateNcclCommunicator(o, store);
  } else {
    tpserve::comm::GlooOptions o;
    o.rank = rank, o.world_size = tp, o.host = "127.0.0.1", o.prefix = "bench/";
    comm = tpserve::comm::CreateGlooCommunicator(o, store);
  }
  if (!comm.ok()) {
    out.status = comm.status();
    return;
  }
  absl::StatusOr<model::ShardSpec> spec = model::ShardSpec::Create(config, rank, tp);
  if (!spec.ok()) {
    out.status = spec.status();
    return;
  }
  absl::StatusOr<tpserve::DType> dtype = tpserve::ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    out.status = dtype.status();
    return;
  }
  model::RandomWeightOptions wo;
  wo.seed = 1;
  wo.dtype = *dtype;
  const auto t_load = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<model::LlamaModel>> m =
      model::LlamaModel::CreateRandom(*spec, backend->get(), comm->get(), wo, model::LlamaModelOptions{});
  if (!m.ok()) {
    out.status = m.status();
    return;
  }
  out.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  out.weight_bytes = (*m)->weight_bytes();

  const int batch = absl::GetFlag(FLAGS_batch), prompt = absl::GetFlag(FLAGS_prompt);
  const int steps = absl::GetFlag(FLAGS_steps), bs = absl::GetFlag(FLAGS_block_size);
  const int blocks_per_seq = (prompt + steps + bs - 1) / bs;
  out.status = (*m)->AllocateKv(batch * blocks_per_seq, bs);
  if (!out.status.ok()) return;
  model::StepInput in;
  for (int s = 0; s < batch; ++s) {
    model::SeqInput q;
    q.seq_id = s;
    for (int t = 0; t < prompt; ++t) q.token_ids.push_back(1 + (s * 131 + t * 17) % (config.vocab_size - 1));
    for (int b = 0; b < blocks_per_seq; ++b) q.block_table.push_back(s * blocks_per_seq + b);
    q.sample = true;
    in.seqs.push_back(std::move(q));
  }
  absl::StatusOr<model::StepOutput> r = (*m)->Forward(in);
  if (!r.ok()) {
    out.status = r.status();
    return;
  }
  out.prefill_s = r->forward_seconds;
  out.prefill_comm_s = r->allreduce_seconds;
  for (int k = 0; k < steps; ++k) {
    for (int s = 0; s < batch; ++s) {
      in.seqs[s].token_ids = {1 + (s * 7 + k * 13) % (config.vocab_size - 1)};
      in.seqs[s].start_position = prompt + k;
    }
    r = (*m)->Forward(in);
    if (!r.ok()) {
      out.status = r.status();
      return;
    }
    out.decode_s.push_back(r->forward_seconds);
    out.decode_comm_s += r->allreduce_seconds;
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  ModelConfig config = Preset(absl::GetFlag(FLAGS_preset));
  if (absl::GetFlag(FLAGS_layers) > 0) config.num_layers = absl::GetFlag(FLAGS_layers);
  const int tp = absl::GetFlag(FLAGS_tp);
  tpserve::comm::MemoryStore store;
  std::vector<RankResult> results(tp);
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) threads.emplace_back([&, r] { RunRank(r, tp, config, store, results[r]); });
  for (auto& t : threads) t.join();
  for (int r = 0; r < tp; ++r) {
    if (!results[r].status.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", r, results[r].status.ToString().c_str());
      return 1;
    }
  }
  const RankResult& r0 = results[0];
  std::vector<double> d = r0.decode_s;
  std::sort(d.begin(), d.end());
  double mean = 0;
  for (double x : d) mean += x;
  mean = d.empty() ? 0 : mean / d.size();
  const int batch = absl::GetFlag(FLAGS_batch), prompt = absl::GetFlag(FLAGS_prompt);
  std::printf("device %s, tp %d, preset %s (%d layers, hidden %d), weights %s, %.2f GiB per rank (load %.1f s)\n",
              r0.device.c_str(), tp, absl::GetFlag(FLAGS_preset).c_str(), config.num_layers, config.hidden_size,
              absl::GetFlag(FLAGS_dtype).c_str(), r0.weight_bytes / double(1 << 30), r0.load_s);
  std::printf("prefill  %d x %d tokens: %8.2f ms  (%8.1f tok/s), collectives %5.1f%%\n", batch, prompt,
              r0.prefill_s * 1e3, batch * prompt / r0.prefill_s, 100.0 * r0.prefill_comm_s / r0.prefill_s);
  if (!d.empty()) {
    std::printf("decode   %d seqs x %zu steps: mean %8.3f ms/step, p50 %8.3f, p90 %8.3f  (%8.1f tok/s), "
                "collectives %5.1f%%\n",
                batch, d.size(), mean * 1e3, d[d.size() / 2] * 1e3, d[d.size() * 9 / 10] * 1e3, batch / mean,
                100.0 * r0.decode_comm_s / (mean * d.size()));
  }
  return 0;
}
