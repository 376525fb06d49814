// Any OpenAI-compatible server (tpserve's --http-port, vLLM, TGI, ...) as a LoadClient: streaming POSTs to
// /v1/chat/completions or /v1/completions over cpp-httplib, read as Server-Sent Events.
//
// Threads: cpp-httplib's client blocks, so each request in flight holds one worker thread, which keeps its own
// keep-alive connection for the requests after it (as a connection pool would). A worker is started only when
// none is free, so there are as many as the run's peak concurrency; they stop when the client is destroyed.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/openai_protocol.h"

namespace httplib {
class Client;
}  // namespace httplib

namespace tpserve::bench {

struct OpenAiOptions {
  // http://HOST:PORT or https://HOST:PORT, optionally with a path prefix; a trailing "/v1" is accepted (the
  // OpenAI SDKs' base_url spelling) and not doubled.
  std::string url;
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChat;
  std::string api_key;  // non-empty: "Authorization: Bearer <key>" on every request
  std::string tls_ca;   // https: verify the server against this PEM CA bundle (system roots when empty)
};

// Thread-safe: Start may be called from one thread while calls finish on the workers.
class OpenAiClient : public LoadClient {
 public:
  // INVALID_ARGUMENT naming --url for a URL that is not http(s)://HOST[:PORT][/prefix].
  static absl::StatusOr<std::unique_ptr<OpenAiClient>> Create(const OpenAiOptions& options);
  ~OpenAiClient() override;

  // GET /v1/models, retrying connection failures for up to `wait` (a server still starting). UNAVAILABLE when
  // nothing answers; an HTTP error (e.g. 401 for a wrong key) is UNAVAILABLE with the server's message.
  absl::StatusOr<std::vector<ServedModel>> ListModels(absl::Duration wait);

  std::unique_ptr<Call> Start(const RequestSpec& spec, RequestRecord record, double timeout_s,
                              CallObserver* observer) override;

 private:
  class HttpCall;
  struct Job {
    HttpCall* call;
    const std::string* body;  // the spec's http_body; specs outlive the run
    double timeout_s;
    CallObserver* observer;
  };

  explicit OpenAiClient(const OpenAiOptions& options) : options_(options) {}
  std::unique_ptr<httplib::Client> NewHttp() const;
  void WorkerLoop();
  // Sends one request and fills its record; WorkerLoop then reports it done.
  void Run(const Job& job, httplib::Client* http) const;

  OpenAiOptions options_;
  std::string origin_;       // scheme://host:port
  std::string prefix_;       // path before /v1, "" or "/something"
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;    // guarded by mu_
  int idle_ = 0;             // workers waiting for a job; guarded by mu_
  bool shutdown_ = false;    // guarded by mu_
  std::vector<std::thread> workers_;  // guarded by mu_
};

}  // namespace tpserve::bench
