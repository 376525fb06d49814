// Synthetic checkpoint writing: a tensor plan, a counter-based PRNG filled in parallel chunks, and
// streaming safetensors / PyTorch-zip shard writers.
#include "tools/model/synthetic_model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/checkpoint/pickle_writer.h"
#include "tools/checkpoint/safetensors_writer.h"
#include "tools/checkpoint/zip_writer.h"

namespace tpserve::model {
namespace {

enum class Init { kNormal, kNorm, kInvFreq };

struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kBF16;
  Init init = Init::kNormal;
  float std = 0.02f;
  bool pytorch_only = false;  // rotary_emb.inv_freq buffers exist only in the .bin release
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t bytes() const { return numel() * static_cast<int64_t>(DTypeSize(dtype)); }
};

// Elements generated per chunk before it is written (16 MB of bf16).
constexpr int64_t kChunkElems = int64_t{8} << 20;
constexpr int kMaxThreads = 8;

std::vector<PlannedTensor> Plan(const ModelConfig& c, DType dtype) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size, q = c.q_size(), kv = c.kv_size();
  const float res_scale = 1.0f / std::sqrt(2.0f * static_cast<float>(c.num_layers));
  auto normal = [&](std::string name, std::vector<int64_t> shape, float std) {
    return PlannedTensor{std::move(name), std::move(shape), dtype, Init::kNormal, std, false};
  };
  std::vector<PlannedTensor> plan;
  plan.push_back(normal("model.embed_tokens.weight", {c.vocab_size, h}, 0.02f));
  for (int l = 0; l < c.num_layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    plan.push_back(normal(p + "self_attn.q_proj.weight", {q, h}, 1.0f / std::sqrt(float(h))));
    plan.push_back(normal(p + "self_attn.k_proj.weight", {kv, h}, 1.0f / std::sqrt(float(h))));
    plan.push_back(normal(p + "self_attn.v_proj.weight", {kv, h}, 1.0f / std::sqrt(float(h))));
    plan.push_back(normal(p + "self_attn.o_proj.weight", {h, q}, res_scale / std::sqrt(float(q))));
    plan.push_back(PlannedTensor{p + "self_attn.rotary_emb.inv_freq", {c.head_dim / 2}, DType::kF32, Init::kInvFreq,
                                 0.0f, true});
    plan.push_back(normal(p + "mlp.gate_proj.weight", {inter, h}, 1.0f / std::sqrt(float(h))));
    plan.push_back(normal(p + "mlp.up_proj.weight", {inter, h}, 1.0f / std::sqrt(float(h))));
    plan.push_back(normal(p + "mlp.down_proj.weight", {h, inter}, res_scale / std::sqrt(float(inter))));
    plan.push_back(PlannedTensor{p + "input_layernorm.weight", {h}, dtype, Init::kNorm, 0.02f, false});
    plan.push_back(PlannedTensor{p + "post_attention_layernorm.weight", {h}, dtype, Init::kNorm, 0.02f, false});
  }
  plan.push_back(PlannedTensor{"model.norm.weight", {h}, dtype, Init::kNorm, 0.02f, false});
  plan.push_back(normal("lm_head.weight", {c.vocab_size, h}, 1.0f / std::sqrt(float(h))));
  return plan;
}

uint64_t Mix(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t NameKey(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (char ch : name) h = (h ^ static_cast<uint8_t>(ch)) * 0x100000001b3ull;
  return Mix(h ^ Mix(seed + 0x9e3779b97f4a7c15ull));
}

// Elements [begin, begin + n) of T into DST (T's dtype). Irwin-Hall of four 16-bit uniforms from one
// hash per element: unit variance, bounded (|z| < 3.47), and cheap enough to write GBs quickly.
void FillRange(const PlannedTensor& t, uint64_t key, float rope_theta, int64_t begin, int64_t n, uint8_t* dst) {
  const float mean = t.init == Init::kNorm ? 1.0f : 0.0f;
  const float scale = t.std * 1.7320508f / 65536.0f;
  const size_t es = DTypeSize(t.dtype);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = begin + i;
    float v;
    if (t.init == Init::kInvFreq) {
      const double dim = 2.0 * static_cast<double>(t.shape[0]);
      v = static_cast<float>(1.0 / std::pow(static_cast<double>(rope_theta), 2.0 * static_cast<double>(idx) / dim));
    } else {
      uint64_t r = Mix(key + static_cast<uint64_t>(idx) * 0x9e3779b97f4a7c15ull);
      float sum = static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
      v = mean + (sum - 2.0f * 65536.0f) * scale;
    }
    uint8_t* d = dst + static_cast<size_t>(i) * es;
    if (t.dtype == DType::kF32) {
      std::memcpy(d, &v, 4);
    } else {
      uint16_t b = t.dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
      std::memcpy(d, &b, 2);
    }
  }
}

void FillParallel(const PlannedTensor& t, uint64_t key, float rope_theta, int64_t begin, int64_t n, uint8_t* dst) {
  int threads = static_cast<int>(std::min<int64_t>(
      {kMaxThreads, static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency())), n / 65536 + 1}));
  if (threads <= 1) {
    FillRange(t, key, rope_theta, begin, n, dst);
    return;
  }
  std::vector<std::thread> pool;
  const size_t es = DTypeSize(t.dtype);
  for (int k = 0; k < threads; ++k) {
    int64_t b = n * k / threads, e = n * (k + 1) / threads;
    pool.emplace_back([&, b, e] { FillRange(t, key, rope_theta, begin + b, e - b, dst + static_cast<size_t>(b) * es); });
  }
  for (auto& th : pool) th.join();
}

// Streams T's bytes, chunk by chunk, into SINK(const uint8_t*, size_t) -> absl::Status.
template <typename Sink>
absl::Status StreamTensor(const PlannedTensor& t, uint64_t seed, float rope_theta, std::vector<uint8_t>* buf,
                          Sink sink) {
  const uint64_t key = NameKey(seed, t.name);
  const int64_t numel = t.numel();
  const size_t es = DTypeSize(t.dtype);
  for (int64_t begin = 0; begin < numel; begin += kChunkElems) {
    int64_t n = std::min(kChunkElems, numel - begin);
    buf->resize(static_cast<size_t>(n) * es);
    FillParallel(t, key, rope_theta, begin, n, buf->data());
    TP_RETURN_IF_ERROR(sink(buf->data(), buf->size()));
  }
  return absl::OkStatus();
}

// Greedy HF-style sharding: a tensor starts a new shard when it would push the current one past MAX.
std::vector<std::vector<const PlannedTensor*>> Shard(const std::vector<PlannedTensor>& plan, bool pytorch,
                                                     int64_t max_bytes) {
  std::vector<std::vector<const PlannedTensor*>> shards(1);
  int64_t current = 0;
  for (const PlannedTensor& t : plan) {
    if (t.pytorch_only && !pytorch) continue;
    if (!shards.back().empty() && current + t.bytes() > max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&t);
    current += t.bytes();
  }
  return shards;
}

std::string ShardName(const char* stem, const char* ext, size_t i, size_t n) {
  if (n == 1) return absl::StrCat(stem, ext);
  return absl::StrFormat("%s-%05d-of-%05d%s", stem, i + 1, n, ext);
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status WriteIndex(const std::string& path, const std::vector<std::vector<const PlannedTensor*>>& shards,
                        const char* stem, const char* ext) {
  nlohmann::ordered_json j;
  int64_t total = 0;
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    for (const PlannedTensor* t : shards[i]) {
      total += t->bytes();
      map[t->name] = ShardName(stem, ext, i, shards.size());
    }
  }
  j["metadata"] = {{"total_size", total}};
  j["weight_map"] = map;
  return WriteText(path, j.dump(2) + "\n");
}

absl::Status WriteSafetensorsLayout(const std::string& dir, const std::vector<PlannedTensor>& plan,
                                    const SyntheticModelOptions& o, float rope_theta) {
  auto shards = Shard(plan, /*pytorch=*/false, o.max_shard_bytes);
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string path = absl::StrCat(dir, "/", ShardName("model", ".safetensors", i, shards.size()));
    std::vector<checkpoint::SafetensorsEntry> entries;
    for (const PlannedTensor* t : shards[i]) entries.push_back({t->name, t->dtype, t->shape});
    std::string header = checkpoint::SafetensorsHeader(entries, {{"format", "pt"}});
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
    auto put = [&](const void* data, size_t n) -> absl::Status {
      if (std::fwrite(data, 1, n, f) != n) return absl::InternalError(absl::StrCat("write to ", path, " failed"));
      return absl::OkStatus();
    };
    absl::Status s = put(header.data(), header.size());
    for (const PlannedTensor* t : shards[i]) {
      if (!s.ok()) break;
      s = StreamTensor(*t, o.seed, rope_theta, &buf, put);
    }
    if (std::fclose(f) != 0 && s.ok()) s = absl::InternalError(absl::StrCat("closing ", path, " failed"));
    TP_RETURN_IF_ERROR(s);
  }
  if (shards.size() > 1) {
    TP_RETURN_IF_ERROR(WriteIndex(dir + "/model.safetensors.index.json", shards, "model", ".safetensors"));
  }
  return absl::OkStatus();
}

absl::Status WritePytorchLayout(const std::string& dir, const std::vector<PlannedTensor>& plan,
                                const SyntheticModelOptions& o, float rope_theta) {
  auto shards = Shard(plan, /*pytorch=*/true, o.max_shard_bytes);
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string file = ShardName("pytorch_model", ".bin", i, shards.size());
    std::string archive = file.substr(0, file.size() - 4);  // torch names the top folder after the file
    std::vector<checkpoint::PickledTensorSpec> specs;
    for (size_t k = 0; k < shards[i].size(); ++k) {
      const PlannedTensor* t = shards[i][k];
      checkpoint::PickledTensorSpec s;
      s.name = t->name;
      s.dtype = t->dtype;
      s.storage_key = std::to_string(k);
      s.storage_numel = t->numel();
      s.shape = t->shape;
      s.strides.assign(t->shape.size(), 1);
      for (int d = static_cast<int>(t->shape.size()) - 2; d >= 0; --d) s.strides[d] = s.strides[d + 1] * t->shape[d + 1];
      specs.push_back(std::move(s));
    }
    TP_ASSIGN_OR_RETURN(auto zip, checkpoint::ZipWriter::Create(dir + "/" + file));
    std::string pkl = checkpoint::PickleStateDict(specs);
    TP_RETURN_IF_ERROR(zip->AddEntry(archive + "/data.pkl", pkl.data(), pkl.size()));
    TP_RETURN_IF_ERROR(zip->AddEntry(archive + "/byteorder", "little", 6));
    for (size_t k = 0; k < shards[i].size(); ++k) {
      TP_RETURN_IF_ERROR(zip->BeginEntry(absl::StrCat(archive, "/data/", k)));
      TP_RETURN_IF_ERROR(StreamTensor(*shards[i][k], o.seed, rope_theta, &buf,
                                      [&](const uint8_t* d, size_t n) { return zip->Write(d, n); }));
      TP_RETURN_IF_ERROR(zip->EndEntry());
    }
    TP_RETURN_IF_ERROR(zip->AddEntry(archive + "/version", "3\n", 2));
    TP_RETURN_IF_ERROR(zip->Finish());
  }
  if (shards.size() > 1) {
    TP_RETURN_IF_ERROR(WriteIndex(dir + "/pytorch_model.bin.index.json", shards, "pytorch_model", ".bin"));
  }
  return absl::OkStatus();
}

// Removes a previous run's files of one layout (STEM.EXT, STEM.EXT.index.json, STEM-*-of-*.EXT), so a
// stale single file or index can never shadow the shards written now (Open prefers the single file).
absl::Status RemoveStaleLayout(const std::string& dir, const std::string& stem, const std::string& ext) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool single = name == stem + ext || name == stem + ext + ".index.json";
    bool shard = name.size() > stem.size() + ext.size() && name.compare(0, stem.size() + 1, stem + "-") == 0 &&
                 name.compare(name.size() - ext.size(), ext.size(), ext) == 0 &&
                 name.find("-of-") != std::string::npos;
    if (single || shard) {
      std::filesystem::remove(entry.path(), ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot remove stale ", entry.path().string(), ": ", ec.message()));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name) {
  ModelConfig c;
  c.model_type = "llama";
  c.rope_theta = 10000.0f;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.tie_word_embeddings = false;
  c.torch_dtype = DType::kBF16;
  if (name == "tiny") {
    c.hidden_size = 256;
    c.num_layers = 4;
    c.num_heads = 8;
    c.num_kv_heads = 4;
    c.intermediate_size = 688;
    c.vocab_size = 512;
    c.max_position_embeddings = 2048;
    c.rms_norm_eps = 1e-5f;
  } else if (name == "llama-2-13b") {
    c.hidden_size = 5120;
    c.num_layers = 40;
    c.num_heads = 40;
    c.num_kv_heads = 40;
    c.intermediate_size = 13824;
    c.vocab_size = 32000;
    c.max_position_embeddings = 8192;
    c.rms_norm_eps = 1e-6f;
  } else if (name == "bench-0.9b") {
    // The shape bench/compare-llamacpp runs both engines on: big enough that decode is memory-bound
    // (1.9 GB in 16-bit), small enough to run many rounds on a 2-core machine.
    c.hidden_size = 2048;
    c.num_layers = 16;
    c.num_heads = 16;
    c.num_kv_heads = 16;
    c.intermediate_size = 5504;
    c.vocab_size = 32000;
    c.max_position_embeddings = 4096;
    c.rms_norm_eps = 1e-5f;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown model preset '", name,
                                                   "': expected \"tiny\", \"bench-0.9b\" or \"llama-2-13b\""));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  return c;
}

absl::StatusOr<ModelConfig> SyntheticModelConfig(const SyntheticModelOptions& o) {
  TP_ASSIGN_OR_RETURN(ModelConfig c, PresetConfig(o.preset));
  if (o.num_layers != -1) {
    if (o.num_layers <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("num_layers must be positive (or -1), got ", o.num_layers));
    }
    c.num_layers = o.num_layers;
  }
  if (o.vocab_size != -1) {
    if (o.vocab_size <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("vocab_size must be positive (or -1), got ", o.vocab_size));
    }
    c.vocab_size = o.vocab_size;
  }
  c.torch_dtype = o.dtype;
  return c;
}

absl::Status WriteSyntheticModel(const SyntheticModelOptions& o) {
  TP_ASSIGN_OR_RETURN(ModelConfig c, SyntheticModelConfig(o));
  if (o.out_dir.empty()) return absl::InvalidArgumentError("out_dir is empty");
  if (!o.write_safetensors && !o.write_pytorch) {
    return absl::InvalidArgumentError("neither write_safetensors nor write_pytorch is set: nothing to write");
  }
  if (o.max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_shard_bytes must be positive, got ", o.max_shard_bytes));
  }
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));

  TP_RETURN_IF_ERROR(WriteText(o.out_dir + "/config.json", ModelConfigToJson(c)));
  TP_RETURN_IF_ERROR(WriteText(o.out_dir + "/generation_config.json",
                               "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n"));
  std::vector<PlannedTensor> plan = Plan(c, o.dtype);
  if (o.write_safetensors) TP_RETURN_IF_ERROR(RemoveStaleLayout(o.out_dir, "model", ".safetensors"));
  if (o.write_pytorch) TP_RETURN_IF_ERROR(RemoveStaleLayout(o.out_dir, "pytorch_model", ".bin"));
  if (o.write_safetensors) TP_RETURN_IF_ERROR(WriteSafetensorsLayout(o.out_dir, plan, o, c.rope_theta));
  if (o.write_pytorch) TP_RETURN_IF_ERROR(WritePytorchLayout(o.out_dir, plan, o, c.rope_theta));
  return absl::OkStatus();
}

}  // namespace tpserve::model
