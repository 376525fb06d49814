// A small HTTP/1.1 server for the metrics port: GET /metrics (Prometheus text format), /health (liveness)
// and /ready (readiness) for probes that cannot speak gRPC. One accept thread; each request is answered and
// the connection closed (probes and scrapers need nothing more). Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace tpserve::coordinator {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse()>;
  ~HttpServer();
  // Path -> handler; unknown paths get 404. Call before Start.
  void Handle(const std::string& path, Handler handler) { handlers_[path] = std::move(handler); }
  // Binds host:port (port 0 = ephemeral) and starts serving. Returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  void AcceptLoop();
  void Serve(int fd);

  std::map<std::string, Handler> handlers_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tpserve::coordinator
