// Implementation of coordinator/http/http_server.h. Every ConnectionImpl method runs on the connection's strand.
#include "coordinator/http/http_server.h"

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <deque>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "common/log.h"

namespace tpserve::coordinator::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

std::optional<std::string> Request::Header(absl::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return std::nullopt;
}

// What Server::Impl and Exchange see of a connection. Every virtual runs on the connection's strand.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  virtual ~Connection() = default;
  virtual net::any_io_executor executor() = 0;
  virtual void Start() = 0;
  virtual void Close() = 0;
  virtual void DoReply(uint64_t seq, Response r) = 0;
  virtual void DoStartStream(uint64_t seq, Response head) = 0;
  virtual void DoWrite(uint64_t seq, std::string data) = 0;
  virtual void DoEndStream(uint64_t seq) = 0;
  virtual void DoOnClientGone(uint64_t seq, std::function<void()> fn) = 0;

  uint64_t id = 0;
  // Steady-clock nanoseconds since the connection began waiting for its next request; 0 while it is busy
  // (handshaking, serving an exchange) or claimed for eviction. Read by the acceptor to pick whom to evict.
  std::atomic<int64_t> waiting_since{0};
};

// Posts from outside the pool pass here, so none is queued once Stop has begun.
class PostGate {
 public:
  template <typename Fn>
  void Post(const std::weak_ptr<Connection>& weak, Fn fn) {
    absl::MutexLock lock(&mu_);
    if (!open_) return;
    std::shared_ptr<Connection> c = weak.lock();
    if (!c) return;
    net::post(c->executor(), [c, fn = std::move(fn)]() mutable { fn(*c); });
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }

 private:
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
};

Exchange::Exchange(std::shared_ptr<PostGate> gate, std::weak_ptr<Connection> connection, uint64_t seq)
    : gate_(std::move(gate)), connection_(std::move(connection)), seq_(seq) {}

template <typename Fn>
void Exchange::Post(Fn fn) {
  gate_->Post(connection_, std::move(fn));
}

void Exchange::Reply(Response response) {
  Post([seq = seq_, r = std::move(response)](Connection& c) mutable { c.DoReply(seq, std::move(r)); });
}
void Exchange::StartStream(Response head) {
  Post([seq = seq_, r = std::move(head)](Connection& c) mutable { c.DoStartStream(seq, std::move(r)); });
}
void Exchange::Write(std::string data) {
  Post([seq = seq_, d = std::move(data)](Connection& c) mutable { c.DoWrite(seq, std::move(d)); });
}
void Exchange::EndStream() {
  Post([seq = seq_](Connection& c) { c.DoEndStream(seq); });
}
void Exchange::OnClientGone(std::function<void()> fn) {
  Post([seq = seq_, f = std::move(fn)](Connection& c) mutable { c.DoOnClientGone(seq, std::move(f)); });
}

namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::chrono::steady_clock::duration ToChrono(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

Response PlainError(int status, const std::string& message) {
  return Response{status, "text/plain; charset=utf-8", message + "\n", {}};
}

}  // namespace

struct Server::Impl {
  explicit Impl(ServerOptions o) : options(std::move(o)), ioc(std::max(1, options.threads)) {}

  // Routing: (path -> method -> handler).
  const Handler* Route(const std::string& path, const std::string& method, int* status) const {
    auto p = routes.find(path);
    if (p == routes.end()) {
      *status = 404;
      return nullptr;
    }
    auto m = p->second.find(method == "HEAD" ? "GET" : method);
    if (m == p->second.end()) {
      *status = 405;
      return nullptr;
    }
    return &m->second;
  }
  Response Error(int status, const std::string& message) const {
    return error_formatter ? error_formatter(status, message) : PlainError(status, message);
  }

  void Accept();
  void OnAccepted(tcp::socket socket);
  void MarkBusy(const std::shared_ptr<Connection>& c) {
    absl::MutexLock lock(&mu);
    if (!stopped) busy[c->id] = c;
  }
  void MarkIdle(uint64_t id) {
    std::shared_ptr<Connection> keep;  // released outside the lock
    absl::MutexLock lock(&mu);
    auto it = busy.find(id);
    if (it != busy.end()) {
      keep = std::move(it->second);
      busy.erase(it);
    }
  }
  void Forget(uint64_t id) {
    MarkIdle(id);
    absl::MutexLock lock(&mu);
    live.erase(id);
  }

  ServerOptions options;
  std::map<std::string, std::map<std::string, Handler>> routes;
  std::function<Response(int, const std::string&)> error_formatter;
  std::shared_ptr<PostGate> gate = std::make_shared<PostGate>();
  std::optional<net::ssl::context> ssl;
  net::io_context ioc;
  // Declared after ioc, so destroyed before it.
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, std::weak_ptr<Connection>> live ABSL_GUARDED_BY(mu);
  // Connections with an exchange awaiting its reply: owned here, since no socket operation may be pending.
  absl::flat_hash_map<uint64_t, std::shared_ptr<Connection>> busy ABSL_GUARDED_BY(mu);
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  bool stopped ABSL_GUARDED_BY(mu) = false;
};

namespace {

template <bool kTls>
class ConnectionImpl final : public Connection {
 public:
  using Stream = std::conditional_t<kTls, beast::ssl_stream<beast::tcp_stream>, beast::tcp_stream>;

  ConnectionImpl(Server::Impl* server, tcp::socket socket) : server_(server), stream_(MakeStream(server, socket)) {}

  net::any_io_executor executor() override { return stream_.get_executor(); }

  void Start() override {
    if constexpr (kTls) {
      waiting_since = SteadyNanos();  // a stalled handshake is as evictable as an idle connection
      Lowest().expires_after(ToChrono(server_->options.read_timeout));
      stream_.async_handshake(net::ssl::stream_base::server, [self = Self()](beast::error_code ec) {
        self->waiting_since = 0;
        if (ec) return self->Close();
        self->ReadRequest();
      });
    } else {
      ReadRequest();
    }
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    waiting_since = 0;
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    Lowest().close();
    if (exchange_open_) ClientGone();
    server_->Forget(id);
  }

  void DoReply(uint64_t seq, Response r) override {
    if (!Current(seq) || streaming_) return;
    exchange_open_ = false;
    res_.emplace(static_cast<bhttp::status>(r.status), 11);
    res_->set(bhttp::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) res_->set(k, v);
    res_->keep_alive(keep_alive_);
    res_->body() = std::move(r.body);
    res_->prepare_payload();
    if (head_request_) res_->body().clear();  // Content-Length stays that of the GET body
    Lowest().expires_after(ToChrono(server_->options.write_timeout));
    bhttp::async_write(stream_, *res_, [self = Self()](beast::error_code ec, size_t) {
      self->res_.reset();
      self->EndExchange(ec);
    });
  }

  void DoStartStream(uint64_t seq, Response head) override {
    if (!Current(seq) || streaming_) return;
    streaming_ = true;
    head_.emplace(static_cast<bhttp::status>(head.status), 11);
    head_->set(bhttp::field::content_type, head.content_type);
    for (const auto& [k, v] : head.headers) head_->set(k, v);
    head_->keep_alive(keep_alive_);
    head_->chunked(true);
    head_sr_.emplace(*head_);
    writing_ = true;
    Lowest().expires_after(ToChrono(server_->options.write_timeout));
    bhttp::async_write_header(stream_, *head_sr_, [self = Self()](beast::error_code ec, size_t) {
      self->OnChunkWritten(ec);
    });
  }

  void DoWrite(uint64_t seq, std::string data) override {
    if (!Current(seq) || !streaming_ || end_queued_ || data.empty()) return;
    out_.push_back(std::move(data));
    MaybeWrite();
  }

  void DoEndStream(uint64_t seq) override {
    if (!Current(seq) || !streaming_ || end_queued_) return;
    end_queued_ = true;
    MaybeWrite();
  }

  void DoOnClientGone(uint64_t seq, std::function<void()> fn) override {
    if (seq != seq_) return;
    if (gone_) {
      fn();
      return;
    }
    on_gone_ = std::move(fn);
  }

 private:
  static Stream MakeStream(Server::Impl* server, tcp::socket& socket) {
    if constexpr (kTls) {
      return Stream(std::move(socket), *server->ssl);
    } else {
      return Stream(std::move(socket));
    }
  }
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }
  std::shared_ptr<ConnectionImpl> Self() { return std::static_pointer_cast<ConnectionImpl>(shared_from_this()); }
  bool Current(uint64_t seq) const { return seq == seq_ && exchange_open_ && !gone_ && !closed_; }

  void ReadRequest() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(static_cast<uint64_t>(server_->options.max_body_bytes));
    parser_->header_limit(static_cast<uint32_t>(server_->options.max_header_bytes));
    waiting_since = SteadyNanos();
    Lowest().expires_after(ToChrono(server_->options.read_timeout));
    // The head first: a client that sent "Expect: 100-continue" (curl does for large bodies) waits for our
    // go-ahead before it sends the body. The deadline set above covers head, go-ahead and body together.
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = Self()](beast::error_code ec, size_t) {
      if (ec || self->parser_->is_done()) return self->OnRead(ec);
      if (absl::EqualsIgnoreCase(std::string(self->parser_->get()[bhttp::field::expect]), "100-continue")) {
        static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
        return net::async_write(self->stream_, net::buffer(kContinue, sizeof(kContinue) - 1),
                                [self](beast::error_code ec, size_t) {
                                  if (ec) return self->OnRead(ec);
                                  self->ReadBody();
                                });
      }
      self->ReadBody();
    });
  }

  void ReadBody() {
    bhttp::async_read(stream_, buffer_, *parser_, [self = Self()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    waiting_since = 0;
    if (closed_) return;
    Lowest().expires_never();
    if (ec) {
      // A timeout, a reset or the client's close: nothing to answer. A malformed or oversized request: say so.
      if (ec.category() != bhttp::make_error_code(bhttp::error::bad_method).category() || ec == bhttp::error::end_of_stream ||
          ec == bhttp::error::partial_message) {
        return Close();
      }
      int status = 400;
      std::string message = absl::StrCat("malformed HTTP request: ", ec.message());
      if (ec == bhttp::error::body_limit) {
        status = 413;
        message = absl::StrCat("request body is larger than the limit of ", server_->options.max_body_bytes,
                               " bytes (--max-message-bytes)");
      } else if (ec == bhttp::error::header_limit) {
        status = 431;
        message = absl::StrCat("request head is larger than the limit of ", server_->options.max_header_bytes, " bytes");
      }
      keep_alive_ = false;
      head_request_ = false;
      linger_ = true;  // the client may still be sending the body: let it finish so it reads our answer
      ++seq_;
      exchange_open_ = true;
      return DoReply(seq_, server_->Error(status, message));
    }
    auto& msg = parser_->get();
    Request req;
    req.method = std::string(msg.method_string());
    std::string target(msg.target());
    if (size_t q = target.find('?'); q != std::string::npos) target.resize(q);
    req.path = std::move(target);
    for (const auto& f : msg) {
      req.headers.emplace_back(absl::AsciiStrToLower(std::string(f.name_string())), std::string(f.value()));
    }
    req.body = std::move(msg.body());
    keep_alive_ = msg.keep_alive();
    head_request_ = req.method == "HEAD";
    parser_.reset();
    ++seq_;
    exchange_open_ = true;
    int status = 0;
    const Handler* handler = server_->Route(req.path, req.method, &status);
    if (handler == nullptr) {
      return DoReply(seq_, server_->Error(status, status == 404 ? absl::StrCat("no route for ", req.path)
                                                                 : absl::StrCat(req.method, " is not allowed on ", req.path)));
    }
    server_->MarkBusy(shared_from_this());
    Watch(seq_);
    auto exchange = std::make_shared<Exchange>(server_->gate, weak_from_this(), seq_);
    try {
      (*handler)(req, exchange);
    } catch (const std::exception& e) {
      TP_LOG(ERROR) << server_->options.name << " http: handler for " << req.path << " threw: " << e.what();
      DoReply(seq_, server_->Error(500, "internal error"));
    }
  }

  // While an exchange is open, notices the client closing its side: readable with nothing to read is EOF.
  void Watch(uint64_t seq) {
    Lowest().socket().async_wait(tcp::socket::wait_read, [self = Self(), seq](beast::error_code ec) {
      if (ec || seq != self->seq_ || !self->exchange_open_ || self->gone_ || self->closed_) return;
      char c;
      ssize_t n = ::recv(self->Lowest().socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        self->ClientGone();
        self->Close();
      } else if (n < 0) {
        self->Watch(seq);
      }
      // n > 0: the client sent more (a pipelined request, a TLS alert); a failed write will still tell.
    });
  }

  void ClientGone() {
    if (gone_) return;
    gone_ = true;
    if (on_gone_) {
      auto fn = std::move(on_gone_);
      on_gone_ = nullptr;
      fn();
    }
  }

  void MaybeWrite() {
    if (writing_ || gone_ || closed_) return;
    if (!out_.empty()) {
      writing_ = true;
      Lowest().expires_after(ToChrono(server_->options.write_timeout));
      net::async_write(stream_, bhttp::make_chunk(net::buffer(out_.front())),
                       [self = Self()](beast::error_code ec, size_t) {
                         self->out_.pop_front();
                         self->OnChunkWritten(ec);
                       });
      return;
    }
    if (end_queued_) {
      writing_ = true;
      Lowest().expires_after(ToChrono(server_->options.write_timeout));
      net::async_write(stream_, bhttp::make_chunk_last(), [self = Self()](beast::error_code ec, size_t) {
        self->writing_ = false;
        self->streaming_ = false;
        self->end_queued_ = false;
        self->head_sr_.reset();
        self->head_.reset();
        self->exchange_open_ = false;
        self->EndExchange(ec);
      });
    }
  }

  void OnChunkWritten(beast::error_code ec) {
    writing_ = false;
    // Disarm: an armed deadline also fails the NEXT operation once it passed, and the next chunk may be a
    // long engine step away.
    Lowest().expires_never();
    if (ec) {
      out_.clear();
      ClientGone();
      return Close();
    }
    MaybeWrite();
  }

  // The reply (or the stream's last chunk) was written, or failed.
  void EndExchange(beast::error_code ec) {
    Lowest().expires_never();
    server_->MarkIdle(id);
    if (ec) {
      ClientGone();
      return Close();
    }
    on_gone_ = nullptr;
    if (keep_alive_) return ReadRequest();
    if (linger_) return Linger();
    Close();
  }

  // Lingering close (as Apache and nginx do): after answering a request whose body was not read, stop
  // sending and discard what still arrives for a while, so the client gets to read the answer instead of a
  // reset from closing with unread data.
  void Linger() {
    beast::error_code ignored;
    Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
    Lowest().expires_after(std::chrono::seconds(5));  // in all
    discard_.resize(64 << 10);
    Discard();
  }
  void Discard() {
    Lowest().async_read_some(net::buffer(discard_), [self = Self()](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->Discard();
    });
  }

  Server::Impl* server_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  uint64_t seq_ = 0;            // the current exchange
  bool exchange_open_ = false;  // the current exchange awaits its reply or stream end
  bool keep_alive_ = false;
  bool head_request_ = false;
  bool gone_ = false;  // the client left (or a write failed) during an exchange
  bool closed_ = false;
  bool linger_ = false;
  std::vector<char> discard_;
  std::function<void()> on_gone_;
  std::optional<bhttp::response<bhttp::string_body>> res_;
  std::optional<bhttp::response<bhttp::empty_body>> head_;
  std::optional<bhttp::response_serializer<bhttp::empty_body>> head_sr_;
  bool streaming_ = false;
  bool writing_ = false;
  bool end_queued_ = false;
  std::deque<std::string> out_;  // chunks not yet written; the front one is in flight while writing_
};

}  // namespace

void Server::Impl::Accept() {
  acceptor->async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
    if (ec) {
      // Out of descriptors, most likely: let closes catch up instead of spinning.
      TP_LOG(WARNING) << options.name << " http: accept failed: " << ec.message();
      auto timer = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) { Accept(); });
      return;
    }
    OnAccepted(std::move(socket));
    Accept();
  });
}

void Server::Impl::OnAccepted(tcp::socket socket) {
  socket.set_option(tcp::no_delay(true));
  std::shared_ptr<Connection> victim;
  std::shared_ptr<Connection> c;
  {
    absl::MutexLock lock(&mu);
    if (stopped) return;
    if (static_cast<int>(live.size()) >= options.max_connections) {
      // Evict the connection that has waited longest for its next request; none waiting: refuse this one.
      int64_t oldest = 0;
      for (auto& [id, weak] : live) {
        auto l = weak.lock();
        if (!l) continue;
        int64_t since = l->waiting_since.load();
        if (since > 0 && (oldest == 0 || since < oldest)) {
          oldest = since;
          victim = std::move(l);
        }
      }
      if (!victim || !victim->waiting_since.compare_exchange_strong(oldest, 0)) {
        beast::error_code ignored;
        socket.close(ignored);
        return;
      }
    }
    if (ssl) {
      c = std::make_shared<ConnectionImpl<true>>(this, std::move(socket));
    } else {
      c = std::make_shared<ConnectionImpl<false>>(this, std::move(socket));
    }
    c->id = next_id++;
    live[c->id] = c;
  }
  if (victim) net::post(victim->executor(), [victim] { victim->Close(); });
  net::post(c->executor(), [c] { c->Start(); });
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Server::~Server() { Stop(); }

void Server::Handle(const std::string& method, const std::string& path, Handler handler) {
  impl_->routes[path][method] = std::move(handler);
}

void Server::SetErrorFormatter(std::function<Response(int, const std::string&)> f) {
  impl_->error_formatter = std::move(f);
}

absl::StatusOr<int> Server::Start() {
  Impl& s = *impl_;
  const ServerOptions& o = s.options;
  if (o.tls.enabled()) {
    if (o.tls.cert.empty() || o.tls.key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(o.name, " port: TLS needs both --tls-cert and --tls-key"));
    }
    auto cert = ReadSmallFile(o.tls.cert, "--tls-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadSmallFile(o.tls.key, "--tls-key");
    if (!key.ok()) return key.status();
    s.ssl.emplace(net::ssl::context::tls_server);
    s.ssl->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                       net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 | net::ssl::context::no_tlsv1_1);
    beast::error_code ec;
    s.ssl->use_certificate_chain(net::buffer(*cert), ec);
    if (!ec) s.ssl->use_private_key(net::buffer(*key), net::ssl::context::pem, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat(o.name, " port: bad --tls-cert/--tls-key: ", ec.message()));
    if (!o.tls.ca.empty()) {
      auto ca = ReadSmallFile(o.tls.ca, "--tls-client-ca");
      if (!ca.ok()) return ca.status();
      s.ssl->add_certificate_authority(net::buffer(*ca), ec);
      if (ec) return absl::InvalidArgumentError(absl::StrCat(o.name, " port: bad --tls-client-ca: ", ec.message()));
      s.ssl->set_verify_mode(net::ssl::verify_peer | net::ssl::verify_fail_if_no_peer_cert);
    }
  }
  beast::error_code ec;
  tcp::resolver resolver(s.ioc);
  const std::string host = o.host.empty() ? "0.0.0.0" : o.host;
  auto results = resolver.resolve(host, std::to_string(o.port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(o.name, " port: cannot resolve host '", host, "'"));
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  s.acceptor.emplace(s.ioc);
  s.acceptor->open(endpoint.protocol(), ec);
  if (!ec) s.acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor->bind(endpoint, ec);
  if (!ec) s.acceptor->listen(1024, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(o.name, " port: cannot listen on ", host, ":", o.port, ": ", ec.message()));
  }
  const int bound = s.acceptor->local_endpoint().port();
  s.Accept();
  for (int i = 0; i < std::max(1, o.threads); ++i) s.threads.emplace_back([&s] { s.ioc.run(); });
  return bound;
}

void Server::Stop() {
  Impl& s = *impl_;
  {
    absl::MutexLock lock(&s.mu);
    if (s.stopped) return;
    s.stopped = true;
  }
  s.gate->Close();
  s.ioc.stop();
  for (auto& t : s.threads) t.join();
  s.threads.clear();
  if (s.acceptor) {
    beast::error_code ec;
    s.acceptor->close(ec);
  }
  absl::flat_hash_map<uint64_t, std::shared_ptr<Connection>> busy;
  {
    absl::MutexLock lock(&s.mu);
    busy.swap(s.busy);
    s.live.clear();
  }
  busy.clear();  // sockets close here; handlers still queued are destroyed with the io_context
}

}  // namespace tpserve::coordinator::http
