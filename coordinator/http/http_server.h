// HTTP/1.1 server on Boost.Beast (asio): the OpenAI API port and the metrics/health port. Why Beast, and not
// cpp-httplib or civetweb: docs/ARCHITECTURE.md, "HTTP server".
//
// Thread model: a fixed pool of `threads` threads runs one io_context; every connection is a strand on it and
// every operation is asynchronous, so an idle, keep-alive or byte-trickling connection holds no thread, only a
// socket. Handlers run on a pool thread and must not block: a handler that waits on the engine keeps its
// Exchange and answers later from any thread (the engine's sinks do).
//
// Limits, per server: `read_timeout` bounds the WHOLE read of one request (head and body, from the moment the
// server starts waiting for it), so a client sending a byte a second cannot hold a connection; the same timer
// closes idle keep-alive connections. `write_timeout` bounds each write (a client that stops reading a stream is
// taken for gone). `max_connections` bounds open connections: at the limit, a new connection evicts the one that
// has waited longest for its next request (idle or trickling); busy ones are never evicted, and when every
// connection is busy the new one is closed. So 64 idle connections cannot keep a probe from /ready.
//
// Thread-safe: Handle before Start; Start and Stop once each.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/credentials.h"

namespace tpserve::coordinator::http {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query string
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  // The value of header `name` (lower-case), or nullopt.
  std::optional<std::string> Header(absl::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers, e.g. {"Retry-After", "1"}
};

class Connection;
class PostGate;

// One request's reply channel: either Reply once, or StartStream, any number of Write, then EndStream.
// Thread-safe and non-blocking: every call is queued to the connection's strand. Calls after the client left
// (or after the server stopped) are dropped.
class Exchange {
 public:
  Exchange(std::shared_ptr<PostGate> gate, std::weak_ptr<Connection> connection, uint64_t seq);

  void Reply(Response response);
  // Sends the head of a chunked response (status, content type, extra headers; the body is ignored).
  void StartStream(Response head);
  void Write(std::string data);  // one chunk
  void EndStream();
  // `fn` runs once, on a server thread, when the client disconnects or a write fails before the exchange
  // ended (the hook for cancelling the request's work). Set it before the work starts.
  void OnClientGone(std::function<void()> fn);

 private:
  template <typename Fn>
  void Post(Fn fn);

  std::shared_ptr<PostGate> gate_;
  std::weak_ptr<Connection> connection_;
  uint64_t seq_;
};

using Handler = std::function<void(const Request&, std::shared_ptr<Exchange>)>;

struct ServerOptions {
  std::string name = "http";  // for log lines and errors ("metrics", "openai")
  std::string host = "0.0.0.0";
  int port = 0;  // 0 = ephemeral
  int threads = 1;
  int max_connections = 256;
  absl::Duration read_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(30);
  int64_t max_body_bytes = 1 << 20;  // larger bodies get 413
  int max_header_bytes = 16 << 10;   // larger heads get 431
  TlsFiles tls;                      // cert + key => HTTPS; ca => clients must present a certificate
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes METHOD PATH to `handler`. An unknown path gets 404, a known path with another method 405.
  // `error_body` formats those and the server's own errors (413, 431, 400) as (status, message) -> Response;
  // the default is plain text.
  void Handle(const std::string& method, const std::string& path, Handler handler);
  void SetErrorFormatter(std::function<Response(int status, const std::string& message)> f);

  // Binds host:port, starts the pool. Returns the bound port. UNAVAILABLE when the port cannot be bound,
  // INVALID_ARGUMENT for unreadable TLS files.
  absl::StatusOr<int> Start();
  // Stops accepting, closes every connection, joins the pool. Replies queued after this are dropped.
  void Stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpserve::coordinator::http
