// Tokenizer: SentencePiece + HF special-token config + the model's chat template; see tokenizer.h.
#include "coordinator/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <fstream>
#include <optional>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/tokenizer/sentencepiece_bridge.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator {
namespace {

constexpr absl::string_view kSpaceSymbol = "\xE2\x96\x81";  // "▁" U+2581

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// HF writes a token either as "<s>" or as {"__type": "AddedToken", "content": "<s>", ...}.
absl::Status ReadTokenField(const nlohmann::json& config, const std::string& file, const char* key,
                            std::optional<std::string>* out) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {
    *out = it->get<std::string>();
    return absl::OkStatus();
  }
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      *out = content->get<std::string>();
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(file, ": \"", key,
                                                 "\" must be a string like \"<s>\" or an object with a "
                                                 "string \"content\" field; got ",
                                                 it->dump()));
}

// The contents of `file`; nullopt when it does not exist.
absl::StatusOr<std::optional<std::string>> ReadOptionalFile(const std::string& file) {
  if (!FileExists(file)) return std::optional<std::string>();
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::InvalidArgumentError(absl::StrCat(file, ": cannot read"));
  return std::optional<std::string>(ss.str());
}

// Overlays the tokens named in `file` (if it exists) onto *tokens.
absl::Status ReadSpecialTokens(const std::string& file, SpecialTokenNames* tokens) {
  TP_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadOptionalFile(file));
  if (!text.has_value()) return absl::OkStatus();
  return ParseSpecialTokensJson(*text, file, tokens);
}

// Refuses a model whose tokenizer_config.json declares one of the template's markers as an added token
// ("added_tokens_decoder": {"32000": {"content": "<|im_start|>"}}) that tokenizer.model does not hold: tpserve
// tokenizes with tokenizer.model alone, so the marker would be split into text pieces the model never saw.
absl::Status CheckTemplateMarkers(const std::string& model_dir, ChatTemplateKind kind, const Tokenizer& tok) {
  const std::string file = model_dir + "/tokenizer_config.json";
  TP_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadOptionalFile(file));
  if (!text.has_value()) return absl::OkStatus();
  nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::OkStatus();  // ParseSpecialTokensJson already reported it
  auto added = config.find("added_tokens_decoder");
  if (added == config.end() || !added->is_object()) return absl::OkStatus();
  for (const auto& [id, token] : added->items()) {
    if (!token.is_object() || !token.contains("content") || !token["content"].is_string()) continue;
    const std::string content = token["content"];
    for (absl::string_view marker : ChatTemplateMarkers(kind)) {
      if (content == marker && tok.PieceToId(marker) < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, ": the ", ChatTemplateName(kind), " chat template writes \"", marker,
            "\", which this model declares as added token ", id,
            " outside tokenizer.model; tpserve tokenizes with tokenizer.model alone and would split it into text, "
            "so this model cannot be served correctly yet"));
      }
    }
  }
  return absl::OkStatus();
}

// The model's chat template choice: DIR/chat_template.jinja (newer transformers save it there), else
// tokenizer_config.json's "chat_template", then SelectChatTemplate.
absl::StatusOr<ChatTemplateKind> ReadChatTemplate(const std::string& model_dir, const std::string& override_name) {
  std::string origin = model_dir + "/chat_template.jinja";
  TP_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadOptionalFile(origin));
  if (!text.has_value()) {
    origin = model_dir + "/tokenizer_config.json";
    TP_ASSIGN_OR_RETURN(std::optional<std::string> config, ReadOptionalFile(origin));
    if (config.has_value()) {
      TP_ASSIGN_OR_RETURN(text, ParseChatTemplateJson(*config, origin));
    }
  }
  return SelectChatTemplate(text, origin, override_name);
}

}  // namespace

absl::Status ParseSpecialTokensJson(absl::string_view json_text, const std::string& file, SpecialTokenNames* names) {
  nlohmann::json config = nlohmann::json::parse(json_text.begin(), json_text.end(), nullptr,
                                                /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(file, ": not valid JSON"));
  if (!config.is_object()) return absl::InvalidArgumentError(absl::StrCat(file, ": expected a JSON object"));
  TP_RETURN_IF_ERROR(ReadTokenField(config, file, "bos_token", &names->bos));
  TP_RETURN_IF_ERROR(ReadTokenField(config, file, "eos_token", &names->eos));
  return absl::OkStatus();
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir,
                                                            const TokenizerOptions& options) {
  const std::string model_path = model_dir + "/tokenizer.model";
  if (!FileExists(model_path)) {
    return absl::NotFoundError(absl::StrCat("tokenizer.model not found in ", model_dir,
                                            ": the model directory must hold the SentencePiece tokenizer.model "
                                            "(copy it from the Hugging Face release or run make-model)"));
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  std::string error;
  tok->sp_ = sp_bridge::Processor::Open(model_path, &error);
  if (tok->sp_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a loadable SentencePiece model (", error, ")"));
  }
  if (tok->sp_->piece_size() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": SentencePiece model has an empty vocabulary"));
  }

  // HF semantics: special_tokens_map.json overrides tokenizer_config.json. Never generation_config.json.
  SpecialTokenNames named;
  TP_RETURN_IF_ERROR(ReadSpecialTokens(model_dir + "/tokenizer_config.json", &named));
  TP_RETURN_IF_ERROR(ReadSpecialTokens(model_dir + "/special_tokens_map.json", &named));
  auto resolve = [&](const std::optional<std::string>& token, int fallback, const char* what) -> absl::StatusOr<int> {
    if (!token.has_value()) return fallback;
    const int32_t id = tok->PieceToId(*token);
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", what, " \"", *token,
                                                     "\" (from tokenizer_config.json / special_tokens_map.json) "
                                                     "is not a piece of tokenizer.model"));
    }
    return id;
  };
  TP_ASSIGN_OR_RETURN(tok->bos_id_, resolve(named.bos, tok->sp_->bos_id(), "bos_token"));
  TP_ASSIGN_OR_RETURN(tok->eos_id_, resolve(named.eos, tok->sp_->eos_id(), "eos_token"));
  if (tok->eos_id_ >= 0) tok->eos_token_ = tok->sp_->IdToPiece(tok->eos_id_);
  if (tok->bos_id_ >= 0) tok->bos_token_ = tok->sp_->IdToPiece(tok->bos_id_);
  TP_ASSIGN_OR_RETURN(tok->chat_template_, ReadChatTemplate(model_dir, options.chat_template));
  TP_RETURN_IF_ERROR(CheckTemplateMarkers(model_dir, tok->chat_template_, *tok));
  TP_RETURN_IF_ERROR(tok->BuildPieceTable());
  return tok;
}

absl::Status Tokenizer::BuildPieceTable() {
  const int n = sp_->piece_size();
  pieces_.resize(n);
  std::string error;
  std::string unk_surface;
  if (sp_->unk_id() >= 0 && !sp_->Decode({sp_->unk_id()}, &unk_surface, &error)) {
    return absl::InternalError(absl::StrCat("decoding <unk>: ", error));
  }
  for (int id = 0; id < n; ++id) {
    TokenPiece& p = pieces_[id];
    const std::string piece = sp_->IdToPiece(id);
    if (id == bos_id_ || id == eos_id_ || sp_->IsControl(id)) {
      p.kind = TokenPiece::Kind::kControl;
    } else if (sp_->IsUnknown(id)) {
      p.kind = TokenPiece::Kind::kUnknown;
      p.text = unk_surface;
    } else if (sp_->IsByte(id)) {
      // Byte pieces are spelled "<0xNN>".
      int value = 0;
      if (piece.size() != 6 || !absl::StartsWith(piece, "<0x") || piece[5] != '>' ||
          !absl::SimpleHexAtoi(absl::string_view(piece).substr(3, 2), &value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.model: byte piece ", id, " is \"", piece, "\", expected \"<0xNN>\""));
      }
      p.kind = TokenPiece::Kind::kByte;
      p.byte = static_cast<uint8_t>(value);
    } else {
      p.kind = TokenPiece::Kind::kText;
      p.leading_space = absl::StartsWith(piece, kSpaceSymbol);
      p.text = absl::StrReplaceAll(piece, {{kSpaceSymbol, " "}});
    }
  }

  // Probe SentencePiece's start-of-sequence rule instead of parsing the model proto (its header is not
  // installed): decode a lone "▁word" piece, then "▁" followed by it.
  for (int id = 0; id < n; ++id) {
    const TokenPiece& p = pieces_[id];
    if (p.kind != TokenPiece::Kind::kText || !p.leading_space || p.text.size() < 2) continue;
    std::string alone;
    if (!sp_->Decode({id}, &alone, &error)) return absl::InternalError(error);
    strips_leading_space_ = (alone == p.text.substr(1));
    const int32_t ws = PieceToId(kSpaceSymbol);
    if (strips_leading_space_ && ws >= 0 && pieces_[ws].kind == TokenPiece::Kind::kText) {
      std::string pair;
      if (!sp_->Decode({ws, id}, &pair, &error)) return absl::InternalError(error);
      strips_all_leading_spaces_ = (pair == alone);
    }
    break;
  }
  return absl::OkStatus();
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  std::vector<int> ids;
  std::string error;
  if (!sp_->Encode(std::string_view(text.data(), text.size()), &ids, &error)) {
    // SentencePiece only fails here on internal errors; invalid UTF-8 is encoded (as U+FFFD), not rejected.
    TP_LOG(ERROR) << "SentencePiece encode failed: " << error;
    return out;
  }
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id == bos_id_ || id == eos_id_) continue;
    kept.push_back(id);
  }
  std::string text, error;
  if (!sp_->Decode(kept, &text, &error)) {
    TP_LOG(ERROR) << "SentencePiece decode failed: " << error;
    return "";
  }
  return text;
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return sp_->IdToPiece(id);
}

int32_t Tokenizer::PieceToId(absl::string_view piece) const {
  const int id = sp_->PieceToId(std::string_view(piece.data(), piece.size()));
  if (id < 0 || id >= sp_->piece_size()) return -1;
  // SentencePiece answers unk_id for unknown pieces; only "<unk>" itself really maps there.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != piece) return -1;
  return id;
}

absl::StatusOr<std::string> Tokenizer::RenderChat(absl::Span<const ChatMessage> messages,
                                                  bool add_generation_prompt) const {
  TP_ASSIGN_OR_RETURN(RenderedChat chat, RenderChatTemplate(chat_template_, messages, add_generation_prompt));
  return chat.Join(bos_token_, eos_token_);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeChat(absl::Span<const ChatMessage> messages,
                                                           bool add_generation_prompt) const {
  TP_ASSIGN_OR_RETURN(RenderedChat chat, RenderChatTemplate(chat_template_, messages, add_generation_prompt));
  std::vector<int32_t> ids;
  auto encode = [&](const std::string& text) {
    std::vector<int32_t> seg = Encode(text, /*add_bos=*/false);
    ids.insert(ids.end(), seg.begin(), seg.end());
  };
  if (bos_id_ >= 0 && !chat.StartsWithBos()) ids.push_back(bos_id_);
  std::string text = chat.texts[0];
  for (size_t i = 0; i < chat.specials.size(); ++i) {
    const bool bos = chat.specials[i] == RenderedChat::Special::kBos;
    const int id = bos ? bos_id_ : eos_id_;
    if (id < 0) {  // a tokenizer without that token: its (empty) string stays part of the text
      absl::StrAppend(&text, bos ? bos_token_ : eos_token_, chat.texts[i + 1]);
      continue;
    }
    encode(text);
    ids.push_back(id);
    text = chat.texts[i + 1];
  }
  encode(text);
  return ids;
}

}  // namespace tpserve::coordinator
