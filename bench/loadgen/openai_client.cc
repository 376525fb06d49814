// Implementation of bench/loadgen/openai_client.h.
#include "bench/loadgen/openai_client.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/sse_parser.h"
#include "httplib.h"

namespace tpserve::bench {
namespace {

// Error bodies are kept up to this size for the report.
constexpr size_t kMaxErrorBody = 64 << 10;
constexpr int kConnectTimeoutSeconds = 10;

// grpc::StatusCode values, so HTTP failures group like gRPC ones in the report (which names them "HTTP <n>").
int CodeForHttpStatus(int status) {
  switch (status) {
    case 400: case 413: case 422: return 3;  // INVALID_ARGUMENT
    case 401: return 16;                     // UNAUTHENTICATED
    case 403: return 7;                      // PERMISSION_DENIED
    case 404: return 5;                      // NOT_FOUND
    case 408: case 504: return 4;            // DEADLINE_EXCEEDED
    case 429: return 8;                      // RESOURCE_EXHAUSTED
    case 501: return 12;                     // UNIMPLEMENTED
    case 503: return 14;                     // UNAVAILABLE
    default: return 2;                       // UNKNOWN
  }
}

}  // namespace

class OpenAiClient::HttpCall : public Call {
 public:
  void Cancel() override {
    std::lock_guard<std::mutex> l(mu_);
    cancelled_ = true;
    if (active_ != nullptr) active_->stop();  // shuts the socket: the blocked send returns
  }
  // Claims `http` for this call unless it was cancelled already.
  bool Activate(httplib::Client* http) {
    std::lock_guard<std::mutex> l(mu_);
    if (cancelled_) return false;
    active_ = http;
    return true;
  }
  void Deactivate() {
    std::lock_guard<std::mutex> l(mu_);
    active_ = nullptr;
  }
  bool cancelled() {
    std::lock_guard<std::mutex> l(mu_);
    return cancelled_;
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  httplib::Client* active_ = nullptr;
};

absl::StatusOr<std::unique_ptr<OpenAiClient>> OpenAiClient::Create(const OpenAiOptions& o) {
  absl::string_view rest = o.url;
  const bool https = absl::StartsWith(rest, "https://");
  if (!https && !absl::StartsWith(rest, "http://")) {
    return absl::InvalidArgumentError(absl::StrCat("--url must start with http:// or https://, got '", o.url, "'"));
  }
  rest.remove_prefix(https ? 8 : 7);
  const size_t slash = rest.find('/');
  const absl::string_view hostport = rest.substr(0, slash);
  absl::string_view prefix = slash == absl::string_view::npos ? "" : rest.substr(slash);
  while (absl::ConsumeSuffix(&prefix, "/")) {
  }
  absl::ConsumeSuffix(&prefix, "/v1");
  const size_t colon = hostport.rfind(':');
  int port = 0;
  if (hostport.empty() || hostport[0] == ':' ||
      (colon != absl::string_view::npos && hostport.back() != ']' &&
       (!absl::SimpleAtoi(hostport.substr(colon + 1), &port) || port <= 0 || port > 65535))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--url '", o.url, "' is not http(s)://HOST[:PORT][/prefix]"));
  }
  std::unique_ptr<OpenAiClient> c(new OpenAiClient(o));
  c->origin_ = absl::StrCat(https ? "https://" : "http://", hostport);
  c->prefix_ = std::string(prefix);
  if (!c->NewHttp()->is_valid()) return absl::InvalidArgumentError(absl::StrCat("--url '", o.url, "' is not usable"));
  return c;
}

OpenAiClient::~OpenAiClient() {
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> l(mu_);
    shutdown_ = true;
    workers.swap(workers_);
  }
  cv_.notify_all();
  for (auto& w : workers) w.join();
}

std::unique_ptr<httplib::Client> OpenAiClient::NewHttp() const {
  auto http = std::make_unique<httplib::Client>(origin_);
  http->set_keep_alive(true);
  // Headers and body go out as separate writes: with Nagle on, the body waits for the server's delayed ACK
  // (~40 ms on Linux), which would be measured as TTFT.
  http->set_tcp_nodelay(true);
  http->set_connection_timeout(kConnectTimeoutSeconds, 0);
  if (!options_.tls_ca.empty()) http->set_ca_cert_path(options_.tls_ca);
  if (!options_.api_key.empty()) http->set_bearer_token_auth(options_.api_key);
  return http;
}

absl::StatusOr<std::vector<ServedModel>> OpenAiClient::ListModels(absl::Duration wait) {
  auto http = NewHttp();
  http->set_read_timeout(30, 0);
  const std::string path = prefix_ + "/v1/models";
  const absl::Time give_up = absl::Now() + wait;
  while (true) {
    httplib::Result res = http->Get(path);
    if (res) {
      if (res->status != 200) {
        return absl::UnavailableError(absl::StrCat("GET ", origin_, path, " failed: ",
                                                   DescribeOpenAiError(res->status, res->body)));
      }
      return ParseOpenAiModels(res->body);
    }
    const bool retry = res.error() == httplib::Error::Connection || res.error() == httplib::Error::ConnectionTimeout;
    if (!retry || absl::Now() >= give_up) {
      return absl::UnavailableError(
          absl::StrCat("--url ", options_.url, " did not answer GET ", path, ": ", httplib::to_string(res.error())));
    }
    absl::SleepFor(absl::Milliseconds(200));  // a server still starting: poll its port
  }
}

std::unique_ptr<Call> OpenAiClient::Start(const RequestSpec& spec, RequestRecord record, double timeout_s,
                                          CallObserver* observer) {
  auto call = std::make_unique<HttpCall>();
  call->record = std::move(record);
  std::lock_guard<std::mutex> l(mu_);
  queue_.push_back({call.get(), &spec.http_body, timeout_s, observer});
  if (idle_ < static_cast<int>(queue_.size())) workers_.emplace_back([this] { WorkerLoop(); });
  cv_.notify_one();
  return call;
}

void OpenAiClient::WorkerLoop() {
  std::unique_ptr<httplib::Client> http = NewHttp();
  std::unique_lock<std::mutex> l(mu_);
  ++idle_;
  while (true) {
    cv_.wait(l, [&] { return shutdown_ || !queue_.empty(); });
    if (queue_.empty()) {  // shutdown
      --idle_;
      return;
    }
    const Job job = queue_.front();
    queue_.pop_front();
    --idle_;
    l.unlock();
    Run(job, http.get());
    l.lock();
    // Available again before the dispatcher hears that the call ended and sends the next request: Start then
    // hands it to this worker (and its open connection) instead of starting another.
    ++idle_;
    l.unlock();
    job.observer->OnDone();  // last touch of the call
    l.lock();
  }
}

void OpenAiClient::Run(const Job& job, httplib::Client* http) const {
  HttpCall* call = job.call;
  RequestRecord& r = call->record;
  if (job.body->empty()) {
    r.end_s = job.observer->Now();
    r.status_code = 13;  // INTERNAL: a workload not prepared with PrepareOpenAiBodies
    r.error = "request has no HTTP body";
    return;
  }
  const double deadline = r.start_s + job.timeout_s;
  int status = 0;
  std::string error_body;
  SseParser parser;
  bool done = false, timed_out = false;
  absl::Status stream_status;

  httplib::Request req;
  req.method = "POST";
  req.path = prefix_ + OpenAiPath(options_.endpoint);
  req.set_header("Accept", "text/event-stream");
  req.set_header("Content-Type", "application/json");
  req.body = *job.body;
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    const auto t0 = std::chrono::steady_clock::now();
    const double t = job.observer->Now();
    if (t > deadline) {
      timed_out = true;
      return false;
    }
    if (status != 200) {
      error_body.append(data, std::min(n, kMaxErrorBody - std::min(kMaxErrorBody, error_body.size())));
      return true;
    }
    const bool ok = parser.Feed(absl::string_view(data, n), [&](const std::string& event) {
      int added = 0;
      stream_status = ApplyOpenAiEvent(event, options_.endpoint, t, &r, &done, &added);
      if (added > 0) job.observer->OnTokens(added);
      return stream_status.ok();
    });
    r.callback_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return ok;
  };

  httplib::Error err = httplib::Error::Success;
  bool sent = false;
  if (call->Activate(http)) {
    http->set_read_timeout(std::chrono::microseconds(static_cast<int64_t>(std::max(0.001, job.timeout_s) * 1e6)));
    httplib::Response res;
    sent = http->send(req, res, err);
    call->Deactivate();
  }
  r.end_s = job.observer->Now();
  const std::string where = absl::StrCat("POST ", origin_, req.path);
  if (call->cancelled()) {
    r.status_code = 1;  // CANCELLED
    r.error = "cancelled by the client";
  } else if (timed_out || (!sent && r.end_s > deadline)) {
    r.status_code = 4;  // DEADLINE_EXCEEDED
    r.error = absl::StrCat("no complete answer within --timeout ", job.timeout_s, " s");
  } else if (!stream_status.ok()) {
    r.status_code = 13;  // INTERNAL
    r.error = std::string(stream_status.message());
  } else if (parser.overflowed()) {
    r.status_code = 13;
    r.error = absl::StrCat("an SSE line exceeded ", SseParser::kMaxLineBytes, " bytes");
  } else if (status != 200 && status != 0) {
    r.http_status = status;
    r.status_code = CodeForHttpStatus(status);
    r.error = DescribeOpenAiError(status, error_body);
  } else if (!sent) {
    r.status_code = 14;  // UNAVAILABLE
    r.error = absl::StrCat(where, ": ", httplib::to_string(err));
  } else if (!r.got_usage) {
    r.status_code = 2;  // UNKNOWN
    r.error = "stream ended without a chunk carrying usage (the server must honour stream_options.include_usage)";
  } else if (!done) {
    r.status_code = 2;
    r.error = "stream ended before data: [DONE]";
  }
}

}  // namespace tpserve::bench
