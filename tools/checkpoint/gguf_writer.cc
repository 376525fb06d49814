// GGUF v3 serialisation and the Llama checkpoint -> GGUF export (names, rope permutation, SentencePiece vocab).
#include "tools/checkpoint/gguf_writer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "sentencepiece_model.pb.h"
#include "worker/checkpoint/checkpoint.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF is written by copying host-order scalars");

namespace tpserve::checkpoint {
namespace {

// gguf_type: the value types of KV pairs.
enum GgufValueType : uint32_t {
  kGgufUint32 = 4,
  kGgufInt32 = 5,
  kGgufFloat32 = 6,
  kGgufBool = 7,
  kGgufString = 8,
  kGgufArray = 9,
};

template <class T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

void PutString(std::string* out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

uint64_t TensorBytes(const GgufTensor& t) {
  uint64_t n = DTypeSize(GgmlTypeToDType(t.type));
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Closes the FILE and removes the partial output unless Release()d.
class PartialFile {
 public:
  explicit PartialFile(std::string path) : path_(std::move(path)), f_(std::fopen(path_.c_str(), "wb")) {}
  ~PartialFile() {
    if (f_ != nullptr) std::fclose(f_);
    if (!released_) std::remove(path_.c_str());
  }
  FILE* get() const { return f_; }
  absl::Status Close() {
    FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0) return absl::InternalError(absl::StrCat("cannot finish writing ", path_));
    return absl::OkStatus();
  }
  void Release() { released_ = true; }

 private:
  std::string path_;
  FILE* f_;
  bool released_ = false;
};

}  // namespace

absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name) {
  if (name == "f32") return GgmlType::kF32;
  if (name == "f16") return GgmlType::kF16;
  if (name == "bf16") return GgmlType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unknown GGUF tensor type '", name, "': expected f16, bf16 or f32"));
}

DType GgmlTypeToDType(GgmlType t) {
  switch (t) {
    case GgmlType::kF16: return DType::kF16;
    case GgmlType::kBF16: return DType::kBF16;
    case GgmlType::kF32: break;
  }
  return DType::kF32;
}

void GgufWriter::AddString(const std::string& key, const std::string& value) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufString);
  PutString(&kv_, value);
  ++num_kv_;
}

void GgufWriter::AddUint32(const std::string& key, uint32_t value) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufUint32);
  Put<uint32_t>(&kv_, value);
  ++num_kv_;
}

void GgufWriter::AddInt32(const std::string& key, int32_t value) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufInt32);
  Put<int32_t>(&kv_, value);
  ++num_kv_;
}

void GgufWriter::AddFloat32(const std::string& key, float value) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufFloat32);
  Put<float>(&kv_, value);
  ++num_kv_;
}

void GgufWriter::AddBool(const std::string& key, bool value) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufBool);
  Put<int8_t>(&kv_, value ? 1 : 0);
  ++num_kv_;
}

void GgufWriter::AddStringArray(const std::string& key, const std::vector<std::string>& values) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufArray);
  Put<uint32_t>(&kv_, kGgufString);
  Put<uint64_t>(&kv_, values.size());
  for (const std::string& v : values) PutString(&kv_, v);
  ++num_kv_;
}

void GgufWriter::AddFloat32Array(const std::string& key, const std::vector<float>& values) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufArray);
  Put<uint32_t>(&kv_, kGgufFloat32);
  Put<uint64_t>(&kv_, values.size());
  for (float v : values) Put<float>(&kv_, v);
  ++num_kv_;
}

void GgufWriter::AddInt32Array(const std::string& key, const std::vector<int32_t>& values) {
  PutString(&kv_, key);
  Put<uint32_t>(&kv_, kGgufArray);
  Put<uint32_t>(&kv_, kGgufInt32);
  Put<uint64_t>(&kv_, values.size());
  for (int32_t v : values) Put<int32_t>(&kv_, v);
  ++num_kv_;
}

void GgufWriter::AddTensor(GgufTensor tensor) { tensors_.push_back(std::move(tensor)); }

absl::Status GgufWriter::Write(const std::string& path, int64_t chunk_bytes) const {
  std::string head;
  head.append("GGUF", 4);
  Put<uint32_t>(&head, 3);
  Put<uint64_t>(&head, tensors_.size());
  Put<uint64_t>(&head, static_cast<uint64_t>(num_kv_));
  head.append(kv_);
  uint64_t offset = 0;  // into the data blob
  for (const GgufTensor& t : tensors_) {
    if (t.shape.empty() || t.shape.size() > 4) {
      return absl::InvalidArgumentError(absl::StrCat(t.name, ": GGUF tensors have 1 to 4 dimensions"));
    }
    for (int64_t d : t.shape) {
      if (d <= 0) return absl::InvalidArgumentError(absl::StrCat(t.name, ": dimension ", d, " is not positive"));
    }
    PutString(&head, t.name);
    Put<uint32_t>(&head, static_cast<uint32_t>(t.shape.size()));
    for (size_t i = t.shape.size(); i-- > 0;) Put<uint64_t>(&head, static_cast<uint64_t>(t.shape[i]));
    Put<uint32_t>(&head, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&head, offset);
    offset = AlignUp(offset + TensorBytes(t), kAlignment);
  }
  head.append(AlignUp(head.size(), kAlignment) - head.size(), '\0');

  const std::string partial = path + ".partial";
  PartialFile file(partial);
  if (file.get() == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create ", partial, ": ", std::strerror(errno)));
  }
  auto write = [&](const void* p, size_t n) -> absl::Status {
    if (n != 0 && std::fwrite(p, 1, n, file.get()) != n) {
      return absl::InternalError(absl::StrCat("write to ", partial, " failed: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  TP_RETURN_IF_ERROR(write(head.data(), head.size()));
  std::vector<uint8_t> buf;
  const char zeros[kAlignment] = {};
  for (const GgufTensor& t : tensors_) {
    const int64_t rows = t.shape[0];
    const uint64_t row_bytes = TensorBytes(t) / static_cast<uint64_t>(rows);
    const int64_t mult = std::max<int64_t>(1, t.row_multiple);
    int64_t chunk_rows = std::max<int64_t>(1, chunk_bytes / static_cast<int64_t>(row_bytes)) / mult * mult;
    if (chunk_rows == 0) chunk_rows = mult;
    for (int64_t begin = 0; begin < rows; begin += chunk_rows) {
      const int64_t end = std::min(rows, begin + chunk_rows);
      buf.resize(static_cast<size_t>(end - begin) * row_bytes);
      absl::Status s = t.read_rows(begin, end, buf.data());
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat(t.name, ": ", s.message()));
      TP_RETURN_IF_ERROR(write(buf.data(), buf.size()));
    }
    const uint64_t bytes = TensorBytes(t);
    TP_RETURN_IF_ERROR(write(zeros, AlignUp(bytes, kAlignment) - bytes));
  }
  TP_RETURN_IF_ERROR(file.Close());
  std::error_code ec;
  std::filesystem::rename(partial, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", partial, " to ", path, ": ", ec.message()));
  file.Release();
  return absl::OkStatus();
}

namespace {

// The tokenizer.ggml.* vocabulary, built as convert_hf_to_gguf.py's _create_vocab_sentencepiece does.
struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // llama.cpp's token types = SentencePiece's piece types (NORMAL 1 ... BYTE 6)
  int bos_id = -1, eos_id = -1, unk_id = -1;
};

absl::StatusOr<Vocab> ReadSentencePieceVocab(const std::string& path, int vocab_size) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open tokenizer model ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  tpserve::spm::ModelProto model;
  if (!model.ParseFromString(ss.str()) || model.pieces_size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a SentencePiece model (no pieces parsed)"));
  }
  if (model.pieces_size() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, " has ", model.pieces_size(),
                                                   " pieces, more than the checkpoint's vocab_size ", vocab_size));
  }
  using Piece = tpserve::spm::ModelProto::SentencePiece;
  Vocab v;
  v.tokens.resize(vocab_size);
  v.scores.assign(vocab_size, -10000.0f);
  v.types.assign(vocab_size, Piece::UNUSED);
  for (int id = 0; id < vocab_size; ++id) {
    if (id >= model.pieces_size()) {
      v.tokens[id] = absl::StrCat("[PAD", id, "]");
      continue;
    }
    const Piece& p = model.pieces(id);
    v.tokens[id] = p.piece();
    v.scores[id] = p.score();
    // The converter asks SentencePieceProcessor IsUnknown / IsControl / IsUnused / IsByte and calls every
    // other piece (USER_DEFINED included) NORMAL.
    switch (p.type()) {
      case Piece::UNKNOWN:
      case Piece::CONTROL:
      case Piece::UNUSED:
      case Piece::BYTE:
        v.types[id] = p.type();
        break;
      default:
        v.types[id] = Piece::NORMAL;
    }
    if (p.type() == Piece::UNKNOWN && v.unk_id < 0) v.unk_id = id;
  }
  const auto& ts = model.trainer_spec();
  auto valid = [&](int id) { return id >= 0 && id < model.pieces_size() ? id : -1; };
  v.bos_id = valid(ts.bos_id());
  v.eos_id = valid(ts.eos_id());
  if (valid(ts.unk_id()) >= 0) v.unk_id = ts.unk_id();
  return v;
}

// Drops the pages of a source tensor the export has finished with from this process (they stay in the page
// cache), so resident memory stays near one chunk however big the checkpoint: a 13B export does not hold 26 GB.
// The checkpoint is mapped read-only MAP_PRIVATE, so a page touched again is simply re-read from the file.
void ReleaseSourcePages(const TensorInfo& t) {
  int64_t last = 0;  // offset of the last element, in elements
  for (size_t i = 0; i < t.shape.size() && i < t.strides.size(); ++i) last += (t.shape[i] - 1) * t.strides[i];
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.data);
  const uintptr_t b = (start + page - 1) / page * page;
  const uintptr_t e = (start + static_cast<uintptr_t>(last + 1) * DTypeSize(t.dtype)) / page * page;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// Rows [begin, end) of a q_proj / k_proj in GGUF order; begin and end are multiples of head_dim.
absl::Status ReadPermutedRows(const Checkpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                              int64_t head_dim, DType dtype, int64_t begin, int64_t end, void* dst) {
  const int64_t cols = shape[1];
  const size_t row_bytes = static_cast<size_t>(cols) * DTypeSize(dtype);
  std::vector<uint8_t> src(static_cast<size_t>(end - begin) * row_bytes);
  TP_RETURN_IF_ERROR(ck.ReadSlice(name, shape, 0, begin, end, dtype, src.data()));
  const int64_t half = head_dim / 2;
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t h = 0; h < (end - begin) / head_dim; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(out + static_cast<size_t>(h * head_dim + 2 * i + j) * row_bytes,
                    src.data() + static_cast<size_t>(h * head_dim + j * half + i) * row_bytes, row_bytes);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExportLlamaGguf(const GgufExportOptions& o) {
  TP_ASSIGN_OR_RETURN(GgmlType matrix_type, ParseGgmlType(o.dtype));
  TP_ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(o.model_dir));
  const std::string tok_path = o.tokenizer_path.empty() ? o.model_dir + "/tokenizer.model" : o.tokenizer_path;
  if (!std::filesystem::exists(tok_path)) {
    return absl::NotFoundError(absl::StrCat(tok_path, " not found: GGUF's tokenizer.ggml.* keys are built from "
                                            "the SentencePiece model (pass --tokenizer PATH if it lives elsewhere)"));
  }
  TP_ASSIGN_OR_RETURN(Vocab vocab, ReadSentencePieceVocab(tok_path, c.vocab_size));
  if (c.head_dim % 2 != 0) return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim, " is odd"));
  TP_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> owned, Checkpoint::Open(o.model_dir));
  std::shared_ptr<const Checkpoint> ck(std::move(owned));

  GgufWriter w;
  const uint32_t file_type = matrix_type == GgmlType::kF32 ? 0 : matrix_type == GgmlType::kF16 ? 1 : 32;
  w.AddString("general.architecture", "llama");
  std::filesystem::path dir = std::filesystem::path(o.model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "models/x/" -> "models/x"
  w.AddString("general.name", dir.filename().string());
  w.AddUint32("general.alignment", GgufWriter::kAlignment);
  w.AddUint32("general.file_type", file_type);
  w.AddUint32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  w.AddUint32("llama.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.AddUint32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.AddUint32("llama.block_count", static_cast<uint32_t>(c.num_layers));
  w.AddUint32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.AddUint32("llama.attention.head_count", static_cast<uint32_t>(c.num_heads));
  w.AddUint32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  w.AddFloat32("llama.rope.freq_base", c.rope_theta);
  w.AddFloat32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  w.AddUint32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    w.AddUint32("llama.attention.key_length", static_cast<uint32_t>(c.head_dim));
    w.AddUint32("llama.attention.value_length", static_cast<uint32_t>(c.head_dim));
  }
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddString("tokenizer.ggml.pre", "default");
  w.AddStringArray("tokenizer.ggml.tokens", vocab.tokens);
  w.AddFloat32Array("tokenizer.ggml.scores", vocab.scores);
  w.AddInt32Array("tokenizer.ggml.token_type", vocab.types);
  if (vocab.bos_id >= 0) w.AddUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(vocab.bos_id));
  if (vocab.eos_id >= 0) w.AddUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(vocab.eos_id));
  if (vocab.unk_id >= 0) w.AddUint32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(vocab.unk_id));
  w.AddBool("tokenizer.ggml.add_bos_token", true);
  w.AddBool("tokenizer.ggml.add_eos_token", false);

  // HF name -> GGUF name, expected PyTorch shape, and whether rows are rope-permuted per head.
  auto add = [&](const std::string& hf, const std::string& gguf, std::vector<int64_t> shape, bool permute) {
    GgufTensor t;
    t.name = gguf;
    t.type = shape.size() == 1 ? GgmlType::kF32 : matrix_type;
    t.shape = shape;
    const DType dt = GgmlTypeToDType(t.type);
    const int64_t d = permute ? c.head_dim : 1;
    t.row_multiple = d;
    t.read_rows = [ck, hf, shape, d, dt, permute](int64_t b, int64_t e, void* dst) -> absl::Status {
      TP_RETURN_IF_ERROR(permute ? ReadPermutedRows(*ck, hf, shape, d, dt, b, e, dst)
                                 : ck->ReadSlice(hf, shape, 0, b, e, dt, dst));
      if (e == shape[0]) {
        if (auto info = ck->Get(hf); info.ok()) ReleaseSourcePages(**info);
      }
      return absl::OkStatus();
    };
    w.AddTensor(std::move(t));
  };
  // Every tensor is checked to exist up front so a missing one fails before a multi-GB write starts.
  std::vector<std::string> missing;
  auto need = [&](const std::string& name) {
    if (!ck->Get(name).ok()) missing.push_back(name);
  };
  const int64_t h = c.hidden_size, ff = c.intermediate_size, q = c.q_size(), kv = c.kv_size(), V = c.vocab_size;
  need("model.embed_tokens.weight");
  add("model.embed_tokens.weight", "token_embd.weight", {V, h}, false);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const std::string b = absl::StrCat("blk.", l, ".");
    const std::pair<const char*, const char*> names[] = {
        {"input_layernorm.weight", "attn_norm.weight"},  {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},    {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},     {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"}};
    for (const auto& [hf, gg] : names) need(p + hf);
    add(p + "input_layernorm.weight", b + "attn_norm.weight", {h}, false);
    add(p + "self_attn.q_proj.weight", b + "attn_q.weight", {q, h}, true);
    add(p + "self_attn.k_proj.weight", b + "attn_k.weight", {kv, h}, true);
    add(p + "self_attn.v_proj.weight", b + "attn_v.weight", {kv, h}, false);
    add(p + "self_attn.o_proj.weight", b + "attn_output.weight", {h, q}, false);
    add(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", {h}, false);
    add(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", {ff, h}, false);
    add(p + "mlp.up_proj.weight", b + "ffn_up.weight", {ff, h}, false);
    add(p + "mlp.down_proj.weight", b + "ffn_down.weight", {h, ff}, false);
  }
  need("model.norm.weight");
  add("model.norm.weight", "output_norm.weight", {h}, false);
  // Tied embeddings without an lm_head: llama.cpp falls back to token_embd for the output projection.
  if (ck->Get("lm_head.weight").ok() || !c.tie_word_embeddings) {
    need("lm_head.weight");
    add("lm_head.weight", "output.weight", {V, h}, false);
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(o.model_dir, " lacks ", missing.size(), " Llama tensor(s), first ",
                                                   missing.front()));
  }
  return w.Write(o.out_path, o.chunk_bytes);
}

}  // namespace tpserve::checkpoint
