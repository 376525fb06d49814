// SentencePiece BPE encode/decode on our own ModelProto parse; training via the spm_train program.
// See sentencepiece_bridge.h for why libsentencepiece is not linked.
#include "coordinator/tokenizer/sentencepiece_bridge.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>

#include "sentencepiece_model.pb.h"

namespace tpserve::coordinator::sp_bridge {
namespace {

using ModelProto = tpserve::spm::ModelProto;
using PieceType = tpserve::spm::ModelProto::SentencePiece;

constexpr char kSpaceSymbol[] = "\xe2\x96\x81";  // U+2581 "▁"
constexpr char kUnknownSurface[] = " \xe2\x81\x87 ";  // " ⁇ ", SentencePiece's surface for <unk>

// Length of the well-formed UTF-8 character at s[0] (RFC 3629: no overlongs, surrogates or values past
// U+10FFFF), or 1 for an invalid byte so bytes are never lost.
size_t CharLen(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 1;
  }
  if (n > s.size() || b(1) < lo || b(1) > hi) return 1;
  for (size_t i = 2; i < n; ++i) {
    if ((b(i) & 0xc0) != 0x80) return 1;
  }
  return n;
}

void AppendReplacingSpaces(std::string_view piece, std::string* out) {
  size_t i = 0;
  while (i < piece.size()) {
    if (piece.compare(i, 3, kSpaceSymbol) == 0) {
      out->push_back(' ');
      i += 3;
    } else {
      out->push_back(piece[i++]);
    }
  }
}

// Appends bytes as UTF-8, each invalid byte becoming U+FFFD (as SentencePiece's decoder does).
void AppendBytes(const std::string& bytes, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t n = CharLen(std::string_view(bytes).substr(i));
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (n == 1 && c >= 0x80) {
      out->append("\xef\xbf\xbd");
    } else {
      out->append(bytes, i, n);
    }
    i += n;
  }
}

}  // namespace

struct Processor::Impl {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
  std::unordered_map<std::string, int> mergeable;  // NORMAL, USER_DEFINED, UNUSED: what BPE may produce
  std::unordered_map<std::string, int> reserved;   // CONTROL, UNKNOWN, BYTE
  std::vector<std::string> user_defined;           // longest first
  int byte_ids[256];
  int unk_id = 0, bos_id = -1, eos_id = -1;
  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;
  bool whitespace_as_suffix = false;

  int Lookup(std::string_view piece) const {
    std::string key(piece);
    if (auto it = mergeable.find(key); it != mergeable.end()) return it->second;
    if (auto it = reserved.find(key); it != reserved.end()) return it->second;
    return unk_id;
  }

  std::string Normalize(std::string_view text) const {
    std::string s(text);
    if (remove_extra_whitespaces) {
      std::string t;
      bool prev_space = true;
      for (char c : s) {
        if (c == ' ') {
          if (!prev_space) t.push_back(' ');
          prev_space = true;
        } else {
          t.push_back(c);
          prev_space = false;
        }
      }
      while (!t.empty() && t.back() == ' ') t.pop_back();
      s.swap(t);
    }
    if (s.empty()) return s;
    if (add_dummy_prefix) {
      if (whitespace_as_suffix) {
        s.push_back(' ');
      } else {
        s.insert(s.begin(), ' ');
      }
    }
    if (!escape_whitespaces) return s;
    std::string out;
    out.reserve(s.size() * 2);
    for (char c : s) {
      if (c == ' ') {
        out.append(kSpaceSymbol);
      } else {
        out.push_back(c);
      }
    }
    return out;
  }

  // SentencePiece's bpe_model.cc Encode (without sampling): merge the adjacent pair whose concatenation is
  // the highest-scoring piece (ties: leftmost) until none is left, then resegment unused pieces.
  void EncodeBpe(const std::string& norm, std::vector<int>* ids) const {
    struct Symbol {
      int prev, next;
      size_t begin, len;
      bool freeze;
    };
    std::vector<Symbol> syms;
    size_t pos = 0;
    while (pos < norm.size()) {
      std::string_view rest = std::string_view(norm).substr(pos);
      size_t len = 0;
      bool freeze = false;
      for (const auto& u : user_defined) {
        if (rest.substr(0, u.size()) == u) {
          len = u.size();
          freeze = true;
          break;
        }
      }
      if (len == 0) len = CharLen(rest);
      syms.push_back({static_cast<int>(syms.size()) - 1, static_cast<int>(syms.size()) + 1, pos, len, freeze});
      pos += len;
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    struct Pair {
      int left, right;
      float score;
      size_t size;
    };
    auto cmp = [](const Pair& a, const Pair& b) {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    };
    std::priority_queue<Pair, std::vector<Pair>, decltype(cmp)> agenda(cmp);
    std::unordered_map<std::string, std::pair<std::string, std::string>> rev_merge;
    auto maybe_add = [&](int left, int right) {
      if (left < 0 || right < 0 || syms[left].freeze || syms[right].freeze) return;
      std::string piece = norm.substr(syms[left].begin, syms[left].len + syms[right].len);
      auto it = mergeable.find(piece);
      if (it == mergeable.end()) return;
      agenda.push({left, right, scores[it->second], piece.size()});
      if (types[it->second] == PieceType::UNUSED) {
        rev_merge[piece] = {norm.substr(syms[left].begin, syms[left].len),
                            norm.substr(syms[right].begin, syms[right].len)};
      }
    };
    for (size_t i = 1; i < syms.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
    while (!agenda.empty()) {
      Pair top = agenda.top();
      agenda.pop();
      Symbol& l = syms[top.left];
      Symbol& r = syms[top.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale
      l.len += r.len;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = top.left;
      r.len = 0;
      maybe_add(l.prev, top.left);
      maybe_add(top.left, l.next);
    }
    std::function<void(const std::string&)> resegment = [&](const std::string& piece) {
      int id = Lookup(piece);
      auto it = rev_merge.find(piece);
      if (types.size() > static_cast<size_t>(id) && types[id] == PieceType::UNUSED && it != rev_merge.end()) {
        resegment(it->second.first);
        resegment(it->second.second);
        return;
      }
      if (id == unk_id && byte_fallback) {
        for (unsigned char b : piece) ids->push_back(byte_ids[b]);
        return;
      }
      ids->push_back(id);
    };
    for (int i = 0; i >= 0; i = syms[i].next) {
      if (syms[i].len > 0) resegment(norm.substr(syms[i].begin, syms[i].len));
    }
  }
};

Processor::Processor() : impl_(std::make_unique<Impl>()) {}
Processor::~Processor() = default;

std::unique_ptr<Processor> Processor::Open(const std::string& path, std::string* error) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = "cannot open " + path;
    return nullptr;
  }
  ModelProto model;
  if (!model.ParseFromIstream(&f)) {
    *error = path + " is not a SentencePiece model (ModelProto does not parse)";
    return nullptr;
  }
  const auto& ts = model.trainer_spec();
  const auto& ns = model.normalizer_spec();
  if (ts.model_type() != tpserve::spm::TrainerSpec::BPE) {
    *error = path + ": only BPE SentencePiece models are supported (Llama's kind); this one is " +
             tpserve::spm::TrainerSpec::ModelType_Name(ts.model_type());
    return nullptr;
  }
  if (!ns.precompiled_charsmap().empty() || (ns.has_name() && ns.name() != "identity")) {
    *error = path + ": normalizer '" + ns.name() +
             "' is not supported; tpserve implements the identity normalizer that Llama tokenizers use";
    return nullptr;
  }
  if (model.pieces_size() == 0) {
    *error = path + ": the model has no pieces";
    return nullptr;
  }
  std::unique_ptr<Processor> p(new Processor());
  Impl& m = *p->impl_;
  std::fill(std::begin(m.byte_ids), std::end(m.byte_ids), -1);
  for (int i = 0; i < model.pieces_size(); ++i) {
    const auto& sp = model.pieces(i);
    m.pieces.push_back(sp.piece());
    m.scores.push_back(sp.score());
    m.types.push_back(sp.type());
    switch (sp.type()) {
      case PieceType::NORMAL:
      case PieceType::UNUSED:
        m.mergeable.emplace(sp.piece(), i);
        break;
      case PieceType::USER_DEFINED:
        m.mergeable.emplace(sp.piece(), i);
        m.user_defined.push_back(sp.piece());
        break;
      case PieceType::BYTE: {
        m.reserved.emplace(sp.piece(), i);
        unsigned v = 0;
        if (sp.piece().size() == 6 && std::sscanf(sp.piece().c_str(), "<0x%2X>", &v) == 1 && v < 256) m.byte_ids[v] = i;
        break;
      }
      case PieceType::UNKNOWN:
        m.unk_id = i;
        m.reserved.emplace(sp.piece(), i);
        break;
      default:
        m.reserved.emplace(sp.piece(), i);
    }
  }
  std::sort(m.user_defined.begin(), m.user_defined.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  auto valid = [&](int id) { return id >= 0 && id < model.pieces_size() ? id : -1; };
  m.bos_id = valid(ts.bos_id());
  m.eos_id = valid(ts.eos_id());
  m.byte_fallback = ts.byte_fallback();
  if (m.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (m.byte_ids[b] < 0) {
        *error = path + ": byte_fallback is on but byte piece <0x" + std::to_string(b) + "> is missing";
        return nullptr;
      }
    }
  }
  m.add_dummy_prefix = ns.add_dummy_prefix();
  m.remove_extra_whitespaces = ns.remove_extra_whitespaces();
  m.escape_whitespaces = ns.escape_whitespaces();
  m.whitespace_as_suffix = ts.treat_whitespace_as_suffix();
  return p;
}

int Processor::piece_size() const { return static_cast<int>(impl_->pieces.size()); }
int Processor::bos_id() const { return impl_->bos_id; }
int Processor::eos_id() const { return impl_->eos_id; }
int Processor::unk_id() const { return impl_->unk_id; }
std::string Processor::IdToPiece(int id) const {
  return id >= 0 && id < piece_size() ? impl_->pieces[id] : std::string();
}
int Processor::PieceToId(std::string_view piece) const { return impl_->Lookup(piece); }
bool Processor::IsByte(int id) const { return id >= 0 && id < piece_size() && impl_->types[id] == PieceType::BYTE; }
bool Processor::IsControl(int id) const {
  return id >= 0 && id < piece_size() && impl_->types[id] == PieceType::CONTROL;
}
bool Processor::IsUnknown(int id) const {
  return id >= 0 && id < piece_size() && impl_->types[id] == PieceType::UNKNOWN;
}

bool Processor::Encode(std::string_view text, std::vector<int>* ids, std::string* error) const {
  ids->clear();
  impl_->EncodeBpe(impl_->Normalize(text), ids);
  return true;
}

bool Processor::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  text->clear();
  std::string bytes;
  bool first = true;  // the dummy-prefix space of the first visible piece is dropped
  auto flush_bytes = [&] {
    if (bytes.empty()) return;
    std::string decoded;
    AppendBytes(bytes, &decoded);
    if (first && impl_->add_dummy_prefix && !decoded.empty() && decoded[0] == ' ') decoded.erase(0, 1);
    text->append(decoded);
    first = false;
    bytes.clear();
  };
  for (int id : ids) {
    if (id < 0 || id >= piece_size()) {
      *error = "token id " + std::to_string(id) + " is outside the vocabulary";
      return false;
    }
    const int type = impl_->types[id];
    if (type == PieceType::CONTROL) continue;
    if (type == PieceType::BYTE) {
      unsigned v = 0;
      std::sscanf(impl_->pieces[id].c_str(), "<0x%2X>", &v);
      bytes.push_back(static_cast<char>(v));
      continue;
    }
    flush_bytes();
    std::string piece;
    if (type == PieceType::UNKNOWN) {
      piece = kUnknownSurface;
    } else {
      AppendReplacingSpaces(impl_->pieces[id], &piece);
    }
    // The dummy-prefix space is dropped from the first visible piece; <unk>'s surface keeps its spaces.
    if (first && type != PieceType::UNKNOWN && impl_->add_dummy_prefix && !piece.empty() && piece[0] == ' ') {
      piece.erase(0, 1);
    }
    first = false;  // only the first non-control piece can carry the dummy prefix
    text->append(piece);
  }
  flush_bytes();
  return true;
}

bool Train(const std::unordered_map<std::string, std::string>& kwargs, std::string* error) {
  std::vector<std::string> args = {"spm_train"};
  for (const auto& [k, v] : kwargs) args.push_back("--" + k + "=" + v);
  char log_template[] = "/tmp/tpserve-spm-train-XXXXXX";
  int log_fd = mkstemp(log_template);
  pid_t pid = fork();
  if (pid < 0) {
    *error = "fork failed";
    return false;
  }
  if (pid == 0) {
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp("spm_train", argv.data());
    std::fprintf(stderr, "cannot run spm_train: install Debian's 'sentencepiece' package (scripts/install-deps.sh)\n");
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::string log;
  if (log_fd >= 0) {
    std::ifstream lf(log_template);
    std::stringstream ss;
    ss << lf.rdbuf();
    log = ss.str();
    close(log_fd);
    unlink(log_template);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (log.size() > 2000) log = log.substr(log.size() - 2000);
    *error = "spm_train failed: " + log;
    return false;
  }
  return true;
}

}  // namespace tpserve::coordinator::sp_bridge
