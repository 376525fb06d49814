// `tpserve generate`: a client of the public API. Streams tokens to stdout as they arrive (GenerateStream);
// --json prints one object at the end instead: {"text", "token_ids", "prompt_token_ids", "finish_reason", "usage"}
// (usage.speculative as on the OpenAI API, when the server speculated for the request).
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/shared_flags.h"
#include "common/credentials.h"
#include "generation.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "tpserve address, HOST:PORT");
ABSL_FLAG(std::string, prompt, "", "raw prompt, encoded as BOS + SentencePiece(prompt)");
ABSL_FLAG(std::string, chat, "", "one user message, rendered with the model's chat template");
ABSL_FLAG(std::string, system, "", "with --chat: a system message before the user message");
ABSL_FLAG(int, max_new_tokens, 64, "tokens to generate at most");
ABSL_FLAG(double, temperature, 1.0, "sampling temperature; 0 = greedy");
ABSL_FLAG(int, top_k, 0, "top-k (0 = off)");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling, (0, 1]");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past EOS");
ABSL_FLAG(bool, no_speculation, false,
          "opt this request out of the server's speculative decoding (GenerateRequest.no_speculation; same output)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(std::string, request_id, "", "request id echoed by the server");
ABSL_FLAG(std::string, tls_ca, "", "connect with TLS, verifying the server against this CA bundle (PEM)");
ABSL_FLAG(int, timeout, 600, "seconds before the client gives up (the server then cancels the request)");

namespace tpserve::cli {

namespace v1 = tpserve::v1;

// "length", "eos", "stop_sequence", ...: the enum value's name without its FINISH_REASON_ prefix, as the CLI
// printed it before the values were prefixed.
std::string FinishName(v1::FinishReason r) {
  return absl::AsciiStrToLower(absl::StripPrefix(v1::FinishReason_Name(r), "FINISH_REASON_"));
}

int GenerateCommand() {
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::string chat = absl::GetFlag(FLAGS_chat);
  if (prompt.empty() == chat.empty()) {
    std::fprintf(stderr, "tpserve generate: give exactly one of --prompt TEXT or --chat TEXT\n");
    return 2;
  }
  v1::GenerateRequest req;
  req.set_request_id(absl::GetFlag(FLAGS_request_id));
  req.set_no_speculation(absl::GetFlag(FLAGS_no_speculation));
  if (!prompt.empty()) {
    req.set_prompt(prompt);
  } else {
    auto* c = req.mutable_chat();
    if (!absl::GetFlag(FLAGS_system).empty()) {
      auto* m = c->add_messages();
      m->set_role("system");
      m->set_content(absl::GetFlag(FLAGS_system));
    }
    auto* m = c->add_messages();
    m->set_role("user");
    m->set_content(chat);
  }
  auto* sp = req.mutable_sampling();
  sp->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sp->set_top_k(absl::GetFlag(FLAGS_top_k));
  sp->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  if (absl::GetFlag(FLAGS_seed) >= 0) sp->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  auto* st = req.mutable_stopping();
  st->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  st->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  for (const auto& s : absl::GetFlag(FLAGS_stop)) st->add_stop(s);

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  TlsFiles tls;
  tls.ca = absl::GetFlag(FLAGS_tls_ca);
  auto creds = MakeChannelCredentials(tls);
  if (!creds.ok()) {
    std::fprintf(stderr, "tpserve generate: %s\n", std::string(creds.status().message()).c_str());
    return 2;
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), *creds, args);
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext ctx;
  if (!absl::GetFlag(FLAGS_api_key_file).empty()) {
    auto key = ReadSmallFile(absl::GetFlag(FLAGS_api_key_file), "--api-key-file");
    if (!key.ok()) {
      std::fprintf(stderr, "tpserve generate: %s\n", std::string(key.status().message()).c_str());
      return 2;
    }
    ctx.AddMetadata("authorization", "Bearer " + std::string(absl::StripAsciiWhitespace(*key)));
  }
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_timeout)));
  const bool json = absl::GetFlag(FLAGS_json);
  auto reader = stub->GenerateStream(&ctx, req);
  v1::GenerateStreamResponse msg;
  std::string text;
  std::vector<int32_t> ids, prompt_ids;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  std::string request_id;
  while (reader->Read(&msg)) {
    if (msg.prompt_token_ids_size() > 0) prompt_ids.assign(msg.prompt_token_ids().begin(), msg.prompt_token_ids().end());
    ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    text += msg.text_delta();
    request_id = msg.request_id();
    if (!json && !msg.text_delta().empty()) {
      std::fwrite(msg.text_delta().data(), 1, msg.text_delta().size(), stdout);
      std::fflush(stdout);
    }
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finish = msg.finish_reason();
      usage = msg.usage();
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) {
    if (!json) std::printf("\n");
    std::fprintf(stderr, "tpserve generate: %s: %s\n",
                 s.error_code() == grpc::StatusCode::UNAVAILABLE ? "server unavailable" : "request failed",
                 s.error_message().c_str());
    return 1;
  }
  if (json) {
    nlohmann::json j;
    j["request_id"] = request_id;
    j["text"] = text;
    j["token_ids"] = ids;
    j["prompt_token_ids"] = prompt_ids;
    j["finish_reason"] = FinishName(finish);
    j["usage"] = {{"prompt_tokens", usage.prompt_tokens()},
                  {"completion_tokens", usage.completion_tokens()},
                  {"cached_prompt_tokens", usage.cached_prompt_tokens()}};
    if (usage.has_speculative()) {
      const v1::SpeculativeUsage& sp = usage.speculative();
      j["usage"]["speculative"] = {{"num_drafts", sp.num_drafts()},
                                   {"num_draft_tokens", sp.num_draft_tokens()},
                                   {"num_accepted_tokens", sp.num_accepted_tokens()}};
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr, "[finish_reason=%s prompt_tokens=%d completion_tokens=%d]\n",
                 FinishName(finish).c_str(), usage.prompt_tokens(),
                 usage.completion_tokens());
  }
  return 0;
}

}  // namespace tpserve::cli
