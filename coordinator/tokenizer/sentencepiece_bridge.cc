// The only translation unit that includes sentencepiece headers (see sentencepiece_bridge.h for why).
#include "coordinator/tokenizer/sentencepiece_bridge.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace tpserve::coordinator::sp_bridge {

Processor::Processor() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Processor::~Processor() = default;

std::unique_ptr<Processor> Processor::Open(const std::string& path, std::string* error) {
  std::unique_ptr<Processor> p(new Processor());
  const auto status = p->sp_->Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return p;
}

int Processor::piece_size() const { return sp_->GetPieceSize(); }
int Processor::bos_id() const { return sp_->bos_id(); }
int Processor::eos_id() const { return sp_->eos_id(); }
int Processor::unk_id() const { return sp_->unk_id(); }
std::string Processor::IdToPiece(int id) const { return sp_->IdToPiece(id); }
int Processor::PieceToId(std::string_view piece) const { return sp_->PieceToId(piece); }
bool Processor::IsByte(int id) const { return sp_->IsByte(id); }
bool Processor::IsControl(int id) const { return sp_->IsControl(id); }
bool Processor::IsUnknown(int id) const { return sp_->IsUnknown(id); }

bool Processor::Encode(std::string_view text, std::vector<int>* ids, std::string* error) const {
  const auto status = sp_->Encode(text, ids);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool Processor::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  const auto status = sp_->Decode(ids, text);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool Train(const std::unordered_map<std::string, std::string>& kwargs, std::string* error) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

}  // namespace tpserve::coordinator::sp_bridge
