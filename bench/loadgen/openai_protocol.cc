// Implementation of bench/loadgen/openai_protocol.h. Everything the server sends is checked for type before it
// is read: a malformed chunk fails its request with a message, never the tool.
#include "bench/loadgen/openai_protocol.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tpserve::bench {
namespace {

using nlohmann::json;

int IntOr(const json& j, const char* key, int fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int>() : fallback;
}

std::string Clip(absl::string_view s, size_t n) {
  return s.size() <= n ? std::string(s) : absl::StrCat(s.substr(0, n), "...");
}

int FinishReasonOf(const std::string& s) {
  if (s == "length") return 1;  // v1::FINISH_REASON_LENGTH
  if (s == "stop") return 2;    // v1::FINISH_REASON_EOS: OpenAI does not tell EOS from a stop string
  return 0;
}

}  // namespace

absl::StatusOr<OpenAiEndpoint> ParseOpenAiEndpoint(const std::string& name) {
  if (name == "chat") return OpenAiEndpoint::kChat;
  if (name == "completions") return OpenAiEndpoint::kCompletions;
  return absl::InvalidArgumentError(absl::StrCat("--endpoint must be chat or completions, got '", name, "'"));
}

const char* OpenAiPath(OpenAiEndpoint endpoint) {
  return endpoint == OpenAiEndpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
}

absl::StatusOr<std::string> BuildOpenAiBody(const RequestSpec& spec, OpenAiEndpoint endpoint,
                                            const std::string& model, const DecodeFn& decode) {
  const v1::GenerateRequest& r = spec.request;
  json body = {{"model", model},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}},
               {"max_tokens", r.stopping().max_new_tokens()},
               {"temperature", r.sampling().temperature()}};
  if (r.stopping().ignore_eos()) body["ignore_eos"] = true;  // only when asked: strict servers refuse it
  if (r.sampling().temperature() > 0 && r.sampling().has_seed()) {
    // OpenAI's seed is a signed 64-bit integer; keep it positive for servers that parse it as such.
    body["seed"] = static_cast<int64_t>(r.sampling().seed() >> 1);
  }
  if (endpoint == OpenAiEndpoint::kCompletions) {
    switch (r.input_case()) {
      case v1::GenerateRequest::kPrompt:
        body["prompt"] = r.prompt();
        break;
      case v1::GenerateRequest::kTokenIds:
        body["prompt"] = std::vector<int32_t>(r.token_ids().ids().begin(), r.token_ids().ids().end());
        break;
      default:
        return absl::InvalidArgumentError(
            "--endpoint completions cannot send chat messages (a --dataset line with \"messages\"); use --endpoint "
            "chat");
    }
  } else {
    json messages = json::array();
    switch (r.input_case()) {
      case v1::GenerateRequest::kChat:
        for (const auto& m : r.chat().messages()) messages.push_back({{"role", m.role()}, {"content", m.content()}});
        break;
      case v1::GenerateRequest::kPrompt:
        messages.push_back({{"role", "user"}, {"content", r.prompt()}});
        break;
      case v1::GenerateRequest::kTokenIds: {
        if (!decode) return absl::InvalidArgumentError("chat requests from token ids need the model's tokenizer");
        messages.push_back({{"role", "user"}, {"content", decode(r.token_ids().ids())}});
        break;
      }
      default:
        return absl::InvalidArgumentError("request has no prompt");
    }
    body["messages"] = std::move(messages);
  }
  // Invalid UTF-8 (a token slice cut inside a character) becomes U+FFFD instead of failing the dump.
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::Status PrepareOpenAiBodies(std::vector<RequestSpec>* specs, OpenAiEndpoint endpoint, const std::string& model,
                                 const DecodeFn& decode) {
  for (RequestSpec& s : *specs) {
    auto body = BuildOpenAiBody(s, endpoint, model, decode);
    if (!body.ok()) return body.status();
    s.http_body = std::move(*body);
  }
  return absl::OkStatus();
}

absl::Status ApplyOpenAiEvent(const std::string& data, OpenAiEndpoint endpoint, double t, RequestRecord* record,
                              bool* done, int* tokens_added) {
  *tokens_added = 0;
  if (data == "[DONE]") {
    *done = true;
    return absl::OkStatus();
  }
  const json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InternalError(absl::StrCat("server sent a chunk that is not a JSON object: ", Clip(data, 200)));
  }
  if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
    return absl::InternalError(absl::StrCat("error chunk in the stream: ", DescribeOpenAiError(0, data)));
  }
  if (auto c = j.find("choices"); c != j.end() && c->is_array() && !c->empty() && (*c)[0].is_object()) {
    const json& choice = (*c)[0];
    const json* text = nullptr;
    if (endpoint == OpenAiEndpoint::kCompletions) {
      if (auto it = choice.find("text"); it != choice.end()) text = &*it;
    } else if (auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
      if (auto it = d->find("content"); it != d->end()) text = &*it;
    }
    if (text != nullptr && text->is_string() && !text->get_ref<const std::string&>().empty()) {
      record->AddChunk(t, 1);
      *tokens_added = 1;
    }
    if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string()) {
      record->finish_reason = FinishReasonOf(f->get<std::string>());
    }
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    record->got_usage = true;
    record->prompt_tokens = IntOr(*u, "prompt_tokens", 0);
    record->completion_tokens = IntOr(*u, "completion_tokens", 0);
    if (auto d = u->find("prompt_tokens_details"); d != u->end()) {
      record->cached_prompt_tokens = IntOr(*d, "cached_tokens", 0);
    }
  }
  return absl::OkStatus();
}

std::string DescribeOpenAiError(int http_status, absl::string_view body) {
  const std::string prefix = http_status > 0 ? absl::StrCat("HTTP ", http_status, ": ") : "";
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  const json* e = nullptr;
  if (!j.is_discarded() && j.is_object()) {
    if (auto it = j.find("error"); it != j.end() && it->is_object()) e = &*it;
  }
  if (e == nullptr) return absl::StrCat(prefix, Clip(body, 300));
  std::string out = prefix;
  if (auto m = e->find("message"); m != e->end() && m->is_string()) out += m->get<std::string>();
  std::string extra;
  for (const char* key : {"type", "param", "code"}) {
    auto it = e->find(key);
    if (it == e->end() || it->is_null()) continue;
    absl::StrAppend(&extra, extra.empty() ? "" : ", ", key, " ",
                    it->is_string() ? it->get<std::string>() : it->dump());
  }
  if (!extra.empty()) absl::StrAppend(&out, " (", extra, ")");
  return out;
}

absl::StatusOr<std::vector<ServedModel>> ParseOpenAiModels(absl::string_view body) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("data") || !j["data"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("GET /v1/models did not answer {\"data\": [...]}: ", Clip(body, 200)));
  }
  std::vector<ServedModel> out;
  for (const json& m : j["data"]) {
    if (!m.is_object() || !m.contains("id") || !m["id"].is_string()) continue;
    out.push_back({m["id"].get<std::string>(), IntOr(m, "max_model_len", 0)});
  }
  return out;
}

}  // namespace tpserve::bench
