// Implementation of coordinator/openai/openai_request.h.
#include "coordinator/openai/openai_request.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

namespace tpserve::coordinator::openai {

namespace v1 = tpserve::v1;
using json = nlohmann::json;

namespace {

absl::Status Invalid(absl::string_view param, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", message));
}

absl::Status WrongType(absl::string_view param, absl::string_view want, const json& got) {
  return Invalid(param, absl::StrCat("expected ", want, ", got ", got.type_name()));
}

// Each getter leaves *out unset when the key is absent or null.
const json* Field(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status GetBool(const json& o, const char* key, std::optional<bool>* out) {
  const json* v = Field(o, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return WrongType(key, "a boolean", *v);
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status GetNumber(const json& o, const char* key, std::optional<float>* out) {
  const json* v = Field(o, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return WrongType(key, "a number", *v);
  *out = static_cast<float>(v->get<double>());
  return absl::OkStatus();
}

// An integer (a float with an integral value counts) within [lo, hi].
absl::Status ToInt(const json& v, absl::string_view param, int64_t lo, int64_t hi, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) return Invalid(param, absl::StrCat("must be at most ", hi, " (got ", u, ")"));
    *out = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else if (v.is_number_float() && std::isfinite(v.get<double>()) && std::trunc(v.get<double>()) == v.get<double>() &&
             std::fabs(v.get<double>()) < 9e18) {
    *out = static_cast<int64_t>(v.get<double>());
  } else {
    return WrongType(param, "an integer", v);
  }
  if (*out < lo || *out > hi) {
    return Invalid(param, absl::StrCat("must be in [", lo, ", ", hi, "] (got ", *out, ")"));
  }
  return absl::OkStatus();
}

absl::Status GetInt(const json& o, const char* key, int64_t lo, int64_t hi, std::optional<int64_t>* out) {
  const json* v = Field(o, key);
  if (v == nullptr) return absl::OkStatus();
  int64_t x;
  if (auto s = ToInt(*v, key, lo, hi, &x); !s.ok()) return s;
  *out = x;
  return absl::OkStatus();
}

absl::Status GetString(const json& o, const char* key, std::optional<std::string>* out) {
  const json* v = Field(o, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return WrongType(key, "a string", *v);
  *out = v->get<std::string>();
  return absl::OkStatus();
}

// OpenAI's message content: a string, or an array of {"type": "text", "text": ...} parts (joined).
absl::Status MessageContent(const json& m, const std::string& param, std::string* out) {
  const json* c = Field(m, "content");
  if (c == nullptr) return absl::OkStatus();  // e.g. an assistant turn that only called tools
  if (c->is_string()) {
    *out = c->get<std::string>();
    return absl::OkStatus();
  }
  if (!c->is_array()) return WrongType(param, "a string or an array of text parts", *c);
  for (size_t i = 0; i < c->size(); ++i) {
    const json& part = (*c)[i];
    const std::string pp = absl::StrCat(param, "[", i, "]");
    if (!part.is_object()) return WrongType(pp, "an object", part);
    const json* type = Field(part, "type");
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
      return Invalid(pp, "only parts of type \"text\" are supported");
    }
    const json* text = Field(part, "text");
    if (text == nullptr || !text->is_string()) return Invalid(absl::StrCat(pp, ".text"), "expected a string");
    out->append(text->get<std::string>());
  }
  return absl::OkStatus();
}

absl::Status ParseMessages(const json& body, v1::GenerateRequest* g) {
  const json* msgs = Field(body, "messages");
  if (msgs == nullptr) return Invalid("messages", "is required");
  if (!msgs->is_array()) return WrongType("messages", "an array", *msgs);
  auto* chat = g->mutable_chat();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return WrongType(param, "an object", m);
    const json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) return Invalid(param + ".role", "expected a string");
    auto* out = chat->add_messages();
    out->set_role(role->get<std::string>());
    if (auto s = MessageContent(m, param + ".content", out->mutable_content()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status TokenIds(const json& arr, absl::string_view param, v1::TokenIdsInput* out) {
  for (size_t i = 0; i < arr.size(); ++i) {
    int64_t id;
    if (auto s = ToInt(arr[i], absl::StrCat(param, "[", i, "]"), 0, std::numeric_limits<int32_t>::max(), &id);
        !s.ok()) {
      return s;
    }
    out->add_ids(static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

// A string, an array of token ids, or a batch of exactly one of either.
absl::Status ParsePrompt(const json& body, v1::GenerateRequest* g) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return Invalid("prompt", "is required");
  if (p->is_array() && p->size() == 1 && (p->at(0).is_string() || p->at(0).is_array())) p = &p->at(0);
  if (p->is_string()) {
    g->set_prompt(p->get<std::string>());
    return absl::OkStatus();
  }
  if (!p->is_array()) return WrongType("prompt", "a string or an array of token ids", *p);
  if (p->empty()) return Invalid("prompt", "must not be empty");
  if (p->at(0).is_string() || p->at(0).is_array()) {
    return Invalid("prompt", "a batch of several prompts is not supported: send one request per prompt (or use n)");
  }
  return TokenIds(*p, "prompt", g->mutable_token_ids());
}

absl::Status ParseStop(const json& body, v1::StoppingCriteria* st) {
  const json* stop = Field(body, "stop");
  if (stop != nullptr) {
    if (stop->is_string()) {
      st->add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) return WrongType(absl::StrCat("stop[", i, "]"), "a string", (*stop)[i]);
        st->add_stop((*stop)[i].get<std::string>());
      }
    } else {
      return WrongType("stop", "a string or an array of strings", *stop);
    }
  }
  const json* ids = Field(body, "stop_token_ids");
  if (ids != nullptr) {
    if (!ids->is_array()) return WrongType("stop_token_ids", "an array of integers", *ids);
    for (size_t i = 0; i < ids->size(); ++i) {
      int64_t id;
      if (auto s = ToInt((*ids)[i], absl::StrCat("stop_token_ids[", i, "]"), 0, std::numeric_limits<int32_t>::max(), &id);
          !s.ok()) {
        return s;
      }
      st->add_stop_token_ids(static_cast<int32_t>(id));
    }
  }
  std::optional<bool> ignore_eos;
  if (auto s = GetBool(body, "ignore_eos", &ignore_eos); !s.ok()) return s;
  st->set_ignore_eos(ignore_eos.value_or(false));
  return absl::OkStatus();
}

absl::Status ParseSampling(const json& body, v1::GenerateRequest* g) {
  auto* sp = g->mutable_sampling();
  std::optional<float> f;
  if (auto s = GetNumber(body, "temperature", &f); !s.ok()) return s;
  if (f) sp->set_temperature(*f);
  f.reset();
  if (auto s = GetNumber(body, "top_p", &f); !s.ok()) return s;
  if (f) sp->set_top_p(*f);
  f.reset();
  if (auto s = GetNumber(body, "min_p", &f); !s.ok()) return s;
  if (f) sp->set_min_p(*f);
  f.reset();
  if (auto s = GetNumber(body, "repetition_penalty", &f); !s.ok()) return s;
  if (f) sp->set_repetition_penalty(*f);
  f.reset();
  if (auto s = GetNumber(body, "presence_penalty", &f); !s.ok()) return s;
  if (f) sp->set_presence_penalty(*f);
  f.reset();
  if (auto s = GetNumber(body, "frequency_penalty", &f); !s.ok()) return s;
  if (f) sp->set_frequency_penalty(*f);
  std::optional<int64_t> i;
  // vLLM spells "disabled" -1; tpserve 0.
  if (auto s = GetInt(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &i); !s.ok()) return s;
  if (i) sp->set_top_k(*i < 0 ? 0 : static_cast<int32_t>(*i));
  i.reset();
  if (auto s = GetInt(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), &i);
      !s.ok()) {
    return s;
  }
  if (i) sp->set_seed(static_cast<uint64_t>(*i));
  return absl::OkStatus();
}

// Features tpserve does not implement are refused rather than silently ignored.
absl::Status RefuseUnsupported(const json& body, Endpoint endpoint) {
  for (const char* key : {"tools", "functions", "tool_choice", "function_call"}) {
    const json* v = Field(body, key);
    if (v == nullptr) continue;
    if (v->is_string() && v->get<std::string>() == "none") continue;
    if (v->is_array() && v->empty()) continue;
    return Invalid(key, "tool and function calling are not supported by tpserve");
  }
  if (const json* v = Field(body, "logit_bias"); v != nullptr && !(v->is_object() && v->empty())) {
    return Invalid("logit_bias", "is not supported by tpserve");
  }
  if (const json* v = Field(body, "response_format"); v != nullptr) {
    const json* type = v->is_object() ? Field(*v, "type") : nullptr;
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
      return Invalid("response_format", "only {\"type\": \"text\"} is supported by tpserve");
    }
  }
  if (endpoint == Endpoint::kCompletions) {
    if (const json* v = Field(body, "echo"); v != nullptr && !(v->is_boolean() && !v->get<bool>())) {
      return Invalid("echo", "is not supported by tpserve");
    }
    if (const json* v = Field(body, "suffix"); v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
      return Invalid("suffix", "is not supported by tpserve");
    }
    if (const json* v = Field(body, "best_of"); v != nullptr && !(v->is_number_integer() && v->get<int64_t>() <= 1)) {
      return Invalid("best_of", "is not supported by tpserve: use n");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(absl::string_view body, Endpoint endpoint) {
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::parse_error& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
    std::string what = e.what();
    if (size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    return Invalid("body", absl::StrCat("is not valid JSON: ", what));
  }
  if (!j.is_object()) return WrongType("body", "a JSON object", j);
  OpenAiRequest r;
  r.endpoint = endpoint;
  if (auto s = RefuseUnsupported(j, endpoint); !s.ok()) return s;
  std::optional<std::string> model, user;
  if (auto s = GetString(j, "model", &model); !s.ok()) return s;
  r.model = model.value_or("");
  if (auto s = GetString(j, "user", &user); !s.ok()) return s;  // accepted; not used
  v1::GenerateRequest& g = r.generate;
  if (auto s = endpoint == Endpoint::kChat ? ParseMessages(j, &g) : ParsePrompt(j, &g); !s.ok()) return s;

  std::optional<int64_t> max_tokens, max_completion_tokens, n, top_logprobs, logprobs_n, priority;
  const int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  if (auto s = GetInt(j, "max_tokens", 1, kInt32Max, &max_tokens); !s.ok()) return s;
  if (auto s = GetInt(j, "max_completion_tokens", 1, kInt32Max, &max_completion_tokens); !s.ok()) return s;
  if (max_completion_tokens) {
    r.max_tokens_param = "max_completion_tokens";
    g.mutable_stopping()->set_max_new_tokens(static_cast<int32_t>(*max_completion_tokens));
  } else if (max_tokens) {
    g.mutable_stopping()->set_max_new_tokens(static_cast<int32_t>(*max_tokens));
  }
  if (auto s = GetInt(j, "n", 1, kMaxChoices, &n); !s.ok()) return s;
  r.n = static_cast<int>(n.value_or(1));
  if (auto s = ParseStop(j, g.mutable_stopping()); !s.ok()) return s;
  if (auto s = ParseSampling(j, &g); !s.ok()) return s;
  if (auto s = GetInt(j, "priority", std::numeric_limits<int32_t>::min(), kInt32Max, &priority); !s.ok()) return s;
  g.set_priority(static_cast<int32_t>(priority.value_or(0)));
  // tpserve's extension, GenerateRequest.no_speculation: opt out of speculative decoding (same output).
  std::optional<bool> no_speculation;
  if (auto s = GetBool(j, "no_speculation", &no_speculation); !s.ok()) return s;
  g.set_no_speculation(no_speculation.value_or(false));

  // Logprobs: chat has a boolean and top_logprobs; completions an integer count of alternatives.
  if (endpoint == Endpoint::kChat) {
    std::optional<bool> logprobs;
    if (auto s = GetBool(j, "logprobs", &logprobs); !s.ok()) return s;
    if (auto s = GetInt(j, "top_logprobs", 0, kInt32Max, &top_logprobs); !s.ok()) return s;
    r.logprobs = logprobs.value_or(false);
    if (top_logprobs && *top_logprobs > 0 && !r.logprobs) return Invalid("top_logprobs", "requires logprobs: true");
    r.top_logprobs = static_cast<int>(top_logprobs.value_or(0));
  } else {
    if (auto s = GetInt(j, "logprobs", 0, kInt32Max, &logprobs_n); !s.ok()) return s;
    r.logprobs = logprobs_n.has_value();
    r.top_logprobs = static_cast<int>(logprobs_n.value_or(0));
  }
  // The engine reports the sampled token's logprob only alongside at least one alternative.
  if (r.logprobs) g.set_logprobs(std::max(1, r.top_logprobs));

  std::optional<bool> stream, include_usage;
  if (auto s = GetBool(j, "stream", &stream); !s.ok()) return s;
  r.stream = stream.value_or(false);
  if (const json* so = Field(j, "stream_options"); so != nullptr) {
    if (!so->is_object()) return WrongType("stream_options", "an object", *so);
    if (!r.stream) return Invalid("stream_options", "is only allowed when stream is true");
    if (auto s = GetBool(*so, "include_usage", &include_usage); !s.ok()) {
      return Invalid("stream_options.include_usage", "expected a boolean");
    }
    r.include_usage = include_usage.value_or(false);
  }
  return r;
}

ParamError ToOpenAiParam(absl::string_view message, const OpenAiRequest& request) {
  const bool chat = request.endpoint == Endpoint::kChat;
  size_t colon = message.find(": ");
  if (colon == absl::string_view::npos || message.substr(0, colon).find(' ') != absl::string_view::npos) {
    return {"", std::string(message)};
  }
  std::string field(message.substr(0, colon));
  std::string rest(message.substr(colon));
  std::string param;
  if (absl::StartsWith(field, "sampling.")) {
    param = field.substr(9);
  } else if (field == "stopping.max_new_tokens") {
    param = request.max_tokens_param;
    rest = absl::StrReplaceAll(rest, {{"max_new_tokens", request.max_tokens_param}});
  } else if (absl::StartsWith(field, "stopping.stop_token_ids")) {
    param = "stop_token_ids";
  } else if (absl::StartsWith(field, "stopping.stop")) {
    param = "stop";
  } else if (absl::StartsWith(field, "chat.messages")) {
    param = field.substr(5);
  } else if (absl::StartsWith(field, "token_ids.ids") || field == "prompt" || field == "input") {
    param = chat ? "messages" : "prompt";
  } else if (field == "logprobs") {
    param = chat ? "top_logprobs" : "logprobs";
  } else if (field == "request_id") {
    param = "";
  } else {
    param = field;  // already an OpenAI name (ParseOpenAiRequest's own errors)
  }
  return {param, param.empty() ? std::string(message) : absl::StrCat(param, rest)};
}

}  // namespace tpserve::coordinator::openai
