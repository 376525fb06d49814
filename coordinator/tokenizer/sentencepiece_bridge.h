// SentencePiece without libsentencepiece: reads tokenizer.model (a ModelProto) with our own protobuf, encodes
// with SentencePiece's BPE algorithm (score-ordered pair merges, unused-piece resegmentation, byte fallback)
// and decodes with its rules. Training runs Debian's `spm_train` in a subprocess.
//
// Why: Debian's libsentencepiece bundles and exports protobuf-lite 3.14; loaded in the same process as gRPC's
// libprotobuf 3.21 the two copies interpose each other's symbols and the process crashes at startup. The
// coordinator needs both, so it links only this implementation. Only BPE models with the identity
// normalizer (Llama 2, Tulu, llama2.c's tokenizers, make-model's) are supported; others are refused at Open.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tpserve::coordinator::sp_bridge {

// Immutable after Open(); all methods are const and safe to call from many threads at once.
class Processor {
 public:
  ~Processor();
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;

  // Loads a serialized SentencePiece model file. nullptr with *error set on failure.
  static std::unique_ptr<Processor> Open(const std::string& path, std::string* error);

  int piece_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int unk_id() const;

  // Ids are not range-checked here: callers check 0 <= id < piece_size() (out of range aborts in protobuf).
  std::string IdToPiece(int id) const;
  int PieceToId(std::string_view piece) const;  // unk_id() when absent
  bool IsByte(int id) const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;

  // SentencePiece's encoder / decoder rules; false with *error on failure.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;

 private:
  struct Impl;
  Processor();
  std::unique_ptr<Impl> impl_;
};

// Runs `spm_train` with flag-style kwargs ({"model_type", "bpe"}, ...). Writes files named by
// "model_prefix". false with *error on failure.
bool Train(const std::unordered_map<std::string, std::string>& kwargs, std::string* error);

}  // namespace tpserve::coordinator::sp_bridge
