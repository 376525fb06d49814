// Std-only facade over libsentencepiece (processor + trainer).
//
// Why a bridge: sentencepiece_processor.h declares `namespace absl { using std::string_view; }`, which is
// ambiguous with Abseil's own absl::string_view class (this Abseil build does not alias std). So the
// sentencepiece headers are included only by sentencepiece_bridge.cc, which includes no Abseil header, and
// everything else talks to SentencePiece through the std types below.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

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

  // SentencePiece's own encoder / decoder; false with *error on failure.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;

 private:
  Processor();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// SentencePieceTrainer::Train with flag-style kwargs ({"model_type", "bpe"}, ...). Writes files named by
// "model_prefix". false with *error on failure.
bool Train(const std::unordered_map<std::string, std::string>& kwargs, std::string* error);

}  // namespace tpserve::coordinator::sp_bridge
