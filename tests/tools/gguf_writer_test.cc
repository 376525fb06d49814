// GGUF export: a tiny synthetic Llama written to GGUF and read back by an independent minimal parser (header,
// KV pairs, tensor infos, alignment, offsets): llama.* keys, the SentencePiece vocab with its padding, tensor
// names / shapes (innermost first) / types, the per-head rope permutation of q and k, values within f16
// rounding, and clear errors for bad input.
#include "tools/checkpoint/gguf_writer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "sentencepiece_model.pb.h"
#include "tests/util/test_env.h"
#include "worker/checkpoint/checkpoint.h"
#include "tools/model/synthetic_model.h"

namespace tpserve::checkpoint {
namespace {

using testing::ScopedTempDir;

// ---- An independent reader of the GGUF bytes (the spec in llama.cpp's gguf.h, nothing from the writer). ----

struct Value {
  uint32_t type = 0;
  uint32_t arr_type = 0;  // for type 9
  double num = 0;         // any scalar number or bool
  std::string str;
  std::vector<double> nums;       // numeric array
  std::vector<std::string> strs;  // string array
};

struct TensorRecord {
  std::string name;
  std::vector<uint64_t> ne;  // innermost first, as stored
  uint32_t type = 0;
  uint64_t offset = 0;  // into the data blob
};

struct Parsed {
  uint32_t version = 0;
  uint64_t n_tensors = 0, n_kv = 0;
  std::map<std::string, Value> kv;
  std::vector<TensorRecord> tensors;
  uint64_t data_start = 0;
};

class Reader {
 public:
  explicit Reader(const std::string& b) : b_(b) {}
  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }
  template <class T>
  T Get() {
    T v{};
    if (pos_ + sizeof(T) > b_.size()) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string Str() {
    const uint64_t n = Get<uint64_t>();
    if (!ok_ || n > b_.size() - pos_) {
      ok_ = false;
      return "";
    }
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  double Scalar(uint32_t type) {
    switch (type) {
      case 0: return Get<uint8_t>();
      case 1: return Get<int8_t>();
      case 2: return Get<uint16_t>();
      case 3: return Get<int16_t>();
      case 4: return Get<uint32_t>();
      case 5: return Get<int32_t>();
      case 6: return Get<float>();
      case 7: return Get<int8_t>();
      case 10: return static_cast<double>(Get<uint64_t>());
      case 11: return static_cast<double>(Get<int64_t>());
      case 12: return Get<double>();
    }
    ok_ = false;
    return 0;
  }

 private:
  const std::string& b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

bool ParseGguf(const std::string& bytes, Parsed* p) {
  if (bytes.size() < 24 || bytes.compare(0, 4, "GGUF") != 0) return false;
  Reader r(bytes);
  r.Get<uint32_t>();  // magic
  p->version = r.Get<uint32_t>();
  p->n_tensors = r.Get<uint64_t>();
  p->n_kv = r.Get<uint64_t>();
  for (uint64_t i = 0; i < p->n_kv && r.ok(); ++i) {
    const std::string key = r.Str();
    Value v;
    v.type = r.Get<uint32_t>();
    if (v.type == 8) {
      v.str = r.Str();
    } else if (v.type == 9) {
      v.arr_type = r.Get<uint32_t>();
      const uint64_t n = r.Get<uint64_t>();
      for (uint64_t k = 0; k < n && r.ok(); ++k) {
        if (v.arr_type == 8) {
          v.strs.push_back(r.Str());
        } else {
          v.nums.push_back(r.Scalar(v.arr_type));
        }
      }
    } else {
      v.num = r.Scalar(v.type);
    }
    if (p->kv.count(key) != 0) return false;  // duplicate keys are invalid GGUF
    p->kv[key] = v;
  }
  for (uint64_t i = 0; i < p->n_tensors && r.ok(); ++i) {
    TensorRecord t;
    t.name = r.Str();
    const uint32_t n_dims = r.Get<uint32_t>();
    if (n_dims == 0 || n_dims > 4) return false;
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(r.Get<uint64_t>());
    t.type = r.Get<uint32_t>();
    t.offset = r.Get<uint64_t>();
    p->tensors.push_back(t);
  }
  uint64_t align = 32;
  if (auto it = p->kv.find("general.alignment"); it != p->kv.end()) align = static_cast<uint64_t>(it->second.num);
  p->data_start = (r.pos() + align - 1) / align * align;
  return r.ok();
}

uint64_t ElemSize(uint32_t ggml_type) { return ggml_type == 0 ? 4 : 2; }

uint64_t NumBytes(const TensorRecord& t) {
  uint64_t n = ElemSize(t.type);
  for (uint64_t d : t.ne) n *= d;
  return n;
}

float HalfToFloat(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant + 1024), exp - 25);
  }
  return sign ? -v : v;
}

// ---- Fixtures ----

// A SentencePiece model with fewer pieces than the checkpoint's vocabulary, so the export must pad.
constexpr int kPieces = 262;

void WriteTokenizerModel(const std::string& path) {
  using Piece = spm::ModelProto::SentencePiece;
  spm::ModelProto m;
  auto add = [&](const std::string& s, float score, Piece::Type type) {
    Piece* p = m.add_pieces();
    p->set_piece(s);
    p->set_score(score);
    p->set_type(type);
  };
  add("<unk>", 0, Piece::UNKNOWN);
  add("<s>", 0, Piece::CONTROL);
  add("</s>", 0, Piece::CONTROL);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    add(buf, 0, Piece::BYTE);
  }
  add("\xe2\x96\x81t", -1.5f, Piece::NORMAL);
  add("he", -2.5f, Piece::NORMAL);
  add("<tool>", 0, Piece::USER_DEFINED);
  m.mutable_trainer_spec()->set_model_type(spm::TrainerSpec::BPE);
  m.mutable_trainer_spec()->set_unk_id(0);
  m.mutable_trainer_spec()->set_bos_id(1);
  m.mutable_trainer_spec()->set_eos_id(2);
  ASSERT_EQ(m.pieces_size(), kPieces);
  std::ofstream(path, std::ios::binary) << m.SerializeAsString();
}

std::string MakeTinyModel(const std::string& root) {
  model::SyntheticModelOptions o;
  o.out_dir = root + "/model";
  o.preset = "tiny";
  o.dtype = DType::kBF16;
  o.seed = 7;
  absl::Status s = model::WriteSyntheticModel(o);
  EXPECT_TRUE(s.ok()) << s;
  WriteTokenizerModel(o.out_dir + "/tokenizer.model");
  return o.out_dir;
}

std::string ReadAllBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<float> ReadSourceF32(const Checkpoint& ck, const std::string& name) {
  auto t = ck.Get(name);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return {};
  int64_t n = 1;
  for (int64_t d : (*t)->shape) n *= d;
  std::vector<float> out(n);
  absl::Status s = ck.ReadSlice(name, (*t)->shape, 0, 0, (*t)->shape[0], DType::kF32, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

const TensorRecord* FindTensor(const Parsed& p, const std::string& name) {
  for (const TensorRecord& t : p.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// GGUF row r of a q/k tensor holds HF row Src(r): r = h*d + 2i + j  <-  h*d + j*d/2 + i.
int64_t PermutedSourceRow(int64_t r, int64_t d) {
  const int64_t h = r / d, w = r % d, i = w / 2, j = w % 2;
  return h * d + j * (d / 2) + i;
}

// Compares an f16 GGUF tensor with the source values (row r of GGUF taken from source row src_row(r)),
// within f16 round-to-nearest: half an ulp, 2^-11 relative for normals, 2^-25 absolute for subnormals.
void ExpectF16Matches(const std::string& bytes, const Parsed& p, const TensorRecord& t, const std::vector<float>& src,
                      const std::function<int64_t(int64_t)>& src_row) {
  ASSERT_EQ(t.type, 1u) << t.name;
  const int64_t cols = static_cast<int64_t>(t.ne[0]), rows = static_cast<int64_t>(t.ne[1]);
  ASSERT_EQ(static_cast<int64_t>(src.size()), rows * cols);
  const char* data = bytes.data() + p.data_start + t.offset;
  int64_t bad = 0, nonzero = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint16_t h;
      std::memcpy(&h, data + 2 * (r * cols + c), 2);
      const float got = HalfToFloat(h);
      const float want = src[src_row(r) * cols + c];
      if (want != 0) ++nonzero;
      if (!(std::fabs(got - want) <= std::max(std::fabs(want) * 0x1p-11f, 0x1p-25f))) {
        if (bad++ < 5) ADD_FAILURE() << t.name << " [" << r << ", " << c << "]: got " << got << " want " << want;
      }
    }
  }
  EXPECT_EQ(bad, 0) << t.name;
  EXPECT_GT(nonzero, rows * cols / 2) << t.name << ": the source is mostly zeros, the comparison proves nothing";
}

TEST(GgufWriterTest, TinyModelRoundTripF16) {
  ScopedTempDir tmp("gguf");
  const std::string model_dir = MakeTinyModel(tmp.path);
  GgufExportOptions o;
  o.model_dir = model_dir;
  o.out_path = tmp.path + "/tiny-f16.gguf";
  o.dtype = "f16";
  absl::Status s = ExportLlamaGguf(o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_FALSE(std::filesystem::exists(o.out_path + ".partial"));

  const std::string bytes = ReadAllBytes(o.out_path);
  Parsed p;
  ASSERT_TRUE(ParseGguf(bytes, &p));
  EXPECT_EQ(p.version, 3u);

  // Hyperparameters: values and GGUF value types (4 = u32, 6 = f32, 8 = string).
  auto num = [&](const std::string& key, uint32_t type) {
    auto it = p.kv.find(key);
    if (it == p.kv.end()) {
      ADD_FAILURE() << "missing key " << key;
      return -1.0;
    }
    EXPECT_EQ(it->second.type, type) << key;
    return it->second.num;
  };
  EXPECT_EQ(p.kv["general.architecture"].str, "llama");
  EXPECT_EQ(num("general.alignment", 4), 32);
  EXPECT_EQ(num("general.file_type", 4), 1);  // LLAMA_FTYPE_MOSTLY_F16
  EXPECT_EQ(num("llama.context_length", 4), 2048);
  EXPECT_EQ(num("llama.embedding_length", 4), 256);
  EXPECT_EQ(num("llama.block_count", 4), 4);
  EXPECT_EQ(num("llama.feed_forward_length", 4), 688);
  EXPECT_EQ(num("llama.attention.head_count", 4), 8);
  EXPECT_EQ(num("llama.attention.head_count_kv", 4), 4);
  EXPECT_EQ(num("llama.rope.dimension_count", 4), 32);
  EXPECT_FLOAT_EQ(num("llama.rope.freq_base", 6), 10000.0f);
  EXPECT_FLOAT_EQ(num("llama.attention.layer_norm_rms_epsilon", 6), 1e-5f);

  // Vocabulary: the 262 pieces, then [PAD<id>] UNUSED up to vocab 512.
  EXPECT_EQ(p.kv["tokenizer.ggml.model"].str, "llama");
  const Value& tokens = p.kv["tokenizer.ggml.tokens"];
  const Value& scores = p.kv["tokenizer.ggml.scores"];
  const Value& types = p.kv["tokenizer.ggml.token_type"];
  EXPECT_EQ(tokens.arr_type, 8u);
  EXPECT_EQ(scores.arr_type, 6u);
  EXPECT_EQ(types.arr_type, 5u);
  ASSERT_EQ(tokens.strs.size(), 512u);
  ASSERT_EQ(scores.nums.size(), 512u);
  ASSERT_EQ(types.nums.size(), 512u);
  EXPECT_EQ(tokens.strs[0], "<unk>");
  EXPECT_EQ(tokens.strs[1], "<s>");
  EXPECT_EQ(tokens.strs[3], "<0x00>");
  EXPECT_EQ(tokens.strs[3 + 0x0a], "<0x0A>");
  EXPECT_EQ(tokens.strs[259], "\xe2\x96\x81t");
  EXPECT_EQ(tokens.strs[kPieces], absl::StrCat("[PAD", kPieces, "]"));
  EXPECT_EQ(tokens.strs[511], "[PAD511]");
  EXPECT_FLOAT_EQ(scores.nums[259], -1.5f);
  EXPECT_FLOAT_EQ(scores.nums[260], -2.5f);
  EXPECT_FLOAT_EQ(scores.nums[511], -10000.0f);
  EXPECT_EQ(types.nums[0], 2);    // UNKNOWN
  EXPECT_EQ(types.nums[1], 3);    // CONTROL
  EXPECT_EQ(types.nums[3], 6);    // BYTE
  EXPECT_EQ(types.nums[259], 1);  // NORMAL
  EXPECT_EQ(types.nums[261], 1);  // USER_DEFINED in the .model reads as NORMAL, as in the converter
  EXPECT_EQ(types.nums[400], 5);  // padding: UNUSED
  EXPECT_EQ(num("tokenizer.ggml.bos_token_id", 4), 1);
  EXPECT_EQ(num("tokenizer.ggml.eos_token_id", 4), 2);
  EXPECT_EQ(num("tokenizer.ggml.unknown_token_id", 4), 0);

  // Tensor infos: 1 + 9 per layer + 2, shapes innermost first, 2-D f16 (1), norms f32 (0).
  ASSERT_EQ(p.tensors.size(), 1u + 9 * 4 + 2);
  std::set<std::string> names;
  for (const TensorRecord& t : p.tensors) names.insert(t.name);
  for (const char* n : {"token_embd.weight", "output_norm.weight", "output.weight", "blk.3.ffn_down.weight",
                        "blk.0.attn_output.weight", "blk.2.ffn_norm.weight"}) {
    EXPECT_EQ(names.count(n), 1u) << n;
  }
  auto expect_tensor = [&](const std::string& name, std::vector<uint64_t> ne, uint32_t type) {
    const TensorRecord* t = FindTensor(p, name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->ne, ne) << name;
    EXPECT_EQ(t->type, type) << name;
  };
  expect_tensor("token_embd.weight", {256, 512}, 1);
  expect_tensor("output.weight", {256, 512}, 1);
  expect_tensor("blk.0.attn_q.weight", {256, 256}, 1);
  expect_tensor("blk.0.attn_k.weight", {256, 128}, 1);
  expect_tensor("blk.0.attn_v.weight", {256, 128}, 1);
  expect_tensor("blk.0.attn_output.weight", {256, 256}, 1);
  expect_tensor("blk.1.ffn_gate.weight", {256, 688}, 1);
  expect_tensor("blk.1.ffn_up.weight", {256, 688}, 1);
  expect_tensor("blk.1.ffn_down.weight", {688, 256}, 1);
  expect_tensor("blk.0.attn_norm.weight", {256}, 0);
  expect_tensor("output_norm.weight", {256}, 0);

  // Layout: aligned data start and offsets, no overlap, everything inside the file.
  EXPECT_EQ(p.data_start % 32, 0u);
  uint64_t end = 0;
  for (const TensorRecord& t : p.tensors) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_GE(t.offset, end) << t.name << " overlaps the tensor before it";
    end = t.offset + NumBytes(t);
  }
  EXPECT_LE(p.data_start + end, bytes.size());
  EXPECT_GE(p.data_start + end + 32, bytes.size());

  // Values: q and k permuted per head, v / o / embeddings as stored, norms exact in f32.
  auto ck = Checkpoint::Open(model_dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const int64_t d = 32;
  auto permuted = [d](int64_t r) { return PermutedSourceRow(r, d); };
  auto same = [](int64_t r) { return r; };
  ExpectF16Matches(bytes, p, *FindTensor(p, "blk.1.attn_k.weight"),
                   ReadSourceF32(**ck, "model.layers.1.self_attn.k_proj.weight"), permuted);
  ExpectF16Matches(bytes, p, *FindTensor(p, "blk.2.attn_q.weight"),
                   ReadSourceF32(**ck, "model.layers.2.self_attn.q_proj.weight"), permuted);
  ExpectF16Matches(bytes, p, *FindTensor(p, "blk.1.attn_v.weight"),
                   ReadSourceF32(**ck, "model.layers.1.self_attn.v_proj.weight"), same);
  ExpectF16Matches(bytes, p, *FindTensor(p, "blk.3.ffn_down.weight"),
                   ReadSourceF32(**ck, "model.layers.3.mlp.down_proj.weight"), same);
  ExpectF16Matches(bytes, p, *FindTensor(p, "token_embd.weight"), ReadSourceF32(**ck, "model.embed_tokens.weight"),
                   same);
  // The permutation really moves rows: row 1 of a head is HF row d/2, not row 1.
  EXPECT_EQ(PermutedSourceRow(1, d), d / 2);
  EXPECT_EQ(PermutedSourceRow(d + 2, d), d + 1);

  const TensorRecord* norm = FindTensor(p, "blk.2.ffn_norm.weight");
  const std::vector<float> want = ReadSourceF32(**ck, "model.layers.2.post_attention_layernorm.weight");
  ASSERT_EQ(want.size(), 256u);
  for (size_t i = 0; i < want.size(); ++i) {
    float got;
    std::memcpy(&got, bytes.data() + p.data_start + norm->offset + 4 * i, 4);
    ASSERT_EQ(got, want[i]) << i;
  }
}

TEST(GgufWriterTest, Bf16KeepsTheStoredBits) {
  ScopedTempDir tmp("gguf");
  const std::string model_dir = MakeTinyModel(tmp.path);
  GgufExportOptions o;
  o.model_dir = model_dir;
  o.out_path = tmp.path + "/tiny-bf16.gguf";
  o.dtype = "bf16";
  ASSERT_TRUE(ExportLlamaGguf(o).ok());
  const std::string bytes = ReadAllBytes(o.out_path);
  Parsed p;
  ASSERT_TRUE(ParseGguf(bytes, &p));
  EXPECT_EQ(p.kv["general.file_type"].num, 32);  // LLAMA_FTYPE_MOSTLY_BF16
  auto ck = Checkpoint::Open(model_dir);
  ASSERT_TRUE(ck.ok());
  for (const auto& [gguf, hf, permute] :
       std::vector<std::tuple<std::string, std::string, bool>>{
           {"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", true},
           {"blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", false}}) {
    const TensorRecord* t = FindTensor(p, gguf);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->type, 30u) << gguf;
    auto info = (*ck)->Get(hf);
    ASSERT_TRUE(info.ok());
    ASSERT_EQ((*info)->dtype, DType::kBF16);
    const int64_t cols = (*info)->shape[1];
    const auto* src = reinterpret_cast<const uint16_t*>((*info)->data);
    for (int64_t r = 0; r < (*info)->shape[0]; ++r) {
      const int64_t sr = permute ? PermutedSourceRow(r, 32) : r;
      ASSERT_EQ(std::memcmp(bytes.data() + p.data_start + t->offset + 2 * r * cols, src + sr * cols, 2 * cols), 0)
          << gguf << " row " << r;
    }
  }
}

// Streaming in chunks of a few heads' rows (q/k permuted chunk by chunk) writes the same bytes as one chunk.
TEST(GgufWriterTest, SmallChunksWriteTheSameFile) {
  ScopedTempDir tmp("gguf");
  GgufExportOptions o;
  o.model_dir = MakeTinyModel(tmp.path);
  o.out_path = tmp.path + "/one-chunk.gguf";
  ASSERT_TRUE(ExportLlamaGguf(o).ok());
  o.out_path = tmp.path + "/small-chunks.gguf";
  o.chunk_bytes = 3 * 32 * 256 * 2 + 100;  // 3 heads of a q/k (head_dim 32, hidden 256, f16) and a bit
  ASSERT_TRUE(ExportLlamaGguf(o).ok());
  const std::string a = ReadAllBytes(tmp.path + "/one-chunk.gguf"), b = ReadAllBytes(o.out_path);
  ASSERT_GT(a.size(), 1000000u);
  EXPECT_TRUE(a == b);
}

TEST(GgufWriterTest, BadInputsAreClearErrors) {
  ScopedTempDir tmp("gguf");
  const std::string model_dir = MakeTinyModel(tmp.path);
  GgufExportOptions o;
  o.model_dir = model_dir;
  o.out_path = tmp.path + "/x.gguf";

  o.dtype = "q4_0";
  absl::Status s = ExportLlamaGguf(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "q4_0")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "f16, bf16 or f32")) << s;
  EXPECT_FALSE(ParseGgmlType("F16").ok());  // the flag's spelling is lower case, as llama.cpp's outtype

  o.dtype = "f16";
  o.tokenizer_path = tmp.path + "/nope/tokenizer.model";
  s = ExportLlamaGguf(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "tokenizer.model")) << s;

  o.tokenizer_path = tmp.path + "/garbage.model";
  std::ofstream(o.tokenizer_path) << "this is not a protobuf \xff\xff\xff\xff";
  s = ExportLlamaGguf(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "garbage.model")) << s;

  o.tokenizer_path.clear();
  std::filesystem::remove(model_dir + "/tokenizer.model");
  s = ExportLlamaGguf(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), model_dir + "/tokenizer.model")) << s;

  o.model_dir = tmp.path + "/no-such-model";
  s = ExportLlamaGguf(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "config.json")) << s;

  EXPECT_FALSE(std::filesystem::exists(o.out_path));
  EXPECT_FALSE(std::filesystem::exists(o.out_path + ".partial"));
}

}  // namespace
}  // namespace tpserve::checkpoint
