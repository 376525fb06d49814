// Gloo over TCP: CPU collectives between tensor-parallel workers, rendezvous through our comm::Store.
// All-reduce is a ring (reduce-scatter + all-gather) over Gloo's unbound buffers: each chunk is summed along
// one fixed ring order by one rank and then copied to the others, so every rank gets bitwise-identical results.
// Gloo reports failures by throwing; every call catches them here and returns a Status (timeouts become
// DEADLINE_EXCEEDED), and a failed communicator refuses further calls (its pairs are in an unknown state).
// Bounds: rendezvous and connecting wait GlooOptions::timeout; each collective waits at most op_timeout (the
// coordinator's --step-timeout). A peer process that dies closes its sockets: Gloo's event loop reads EOF
// and fails every operation queued on that pair at once (UNAVAILABLE). Gloo (0.5, and upstream as of 2025-05)
// does not fail the segment a pair is in the middle of receiving when the connection closes, so a thread of
// this class watches the pairs' sockets and aborts the communicator when a peer's end closes: Abort()
// interrupts every wait of the collective in flight, since the collectives run on buffers this class owns.
// Another thread may call Abort() too (a hung peer; the worker does on a new LoadCommand).
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "gloo/context.h"
#include "gloo/common/error.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/address.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "worker/comm/communicator.h"

namespace tpserve::comm {
namespace {

// Carries a Status through Gloo's exception-based store interface.
class StoreError : public std::runtime_error {
 public:
  explicit StoreError(absl::Status status)
      : std::runtime_error(std::string(status.message())), status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

// gloo::rendezvous::Store over comm::Store. Waits honour the communicator's timeout.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(comm::Store& store, absl::Duration timeout) : store_(store), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status s = store_.Set(key, std::string(data.begin(), data.end()));
    if (!s.ok()) throw StoreError(s);
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> v = store_.Get(key, timeout_);
    if (!v.ok()) throw StoreError(v.status());
    return std::vector<char>(v->begin(), v->end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, kDefaultTimeout); }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    // Gloo passes its 30 s default here; ours (GlooOptions::timeout) wins so one knob governs startup.
    for (const std::string& key : keys) {
      absl::StatusOr<std::string> v = store_.Get(key, timeout_);
      if (!v.ok()) throw StoreError(v.status());
    }
  }

 private:
  comm::Store& store_;
  absl::Duration timeout_;
};

// Maps whatever Gloo (or our store) threw to a Status naming the operation.
absl::Status StatusFromException(const std::string& what_op, std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const StoreError& se) {
    return absl::Status(se.status().code(), absl::StrCat("gloo ", what_op, ": ", se.status().message()));
  } catch (const gloo::IoException& ie) {
    const std::string msg = ie.what();
    if (absl::StrContains(msg, "imed out") || absl::StrContains(msg, "imeout")) {
      return absl::DeadlineExceededError(absl::StrCat("gloo ", what_op, " timed out: ", msg));
    }
    return absl::UnavailableError(absl::StrCat("gloo ", what_op, " failed (peer gone?): ", msg));
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("gloo ", what_op, " failed: ", ex.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("gloo ", what_op, " failed with an unknown exception"));
  }
}

bool SameAddress(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
  }
  return false;
}

// A duplicate of this process's socket whose local address is `self`, or -1. Each connected pair's socket has
// its own local address (the pair's listener, which it closed after accepting, or an ephemeral port).
int DupSocketBoundTo(const sockaddr_storage& self) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  const int dir_fd = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dir_fd) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), &len) != 0) continue;
    if (SameAddress(ss, self)) {
      found = fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0);
      break;
    }
  }
  closedir(dir);
  return found;
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(const GlooOptions& options, std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::Context> context)
      : rank_(options.rank),
        world_size_(options.world_size),
        device_(std::move(device)),
        context_(std::move(context)),
        op_timeout_(absl::ToChronoMilliseconds(options.op_timeout)) {
    // Gloo 0.5 has no public way to fail a pair from outside (tcp::Pair::signalExceptionExternal sits in a
    // header Debian does not ship whole), so this class keeps a duplicate of each pair's socket: Abort() shuts
    // them down (the peers read end-of-stream and fail, as when a process dies), the monitor thread polls them
    // for the peer's end-of-stream, and a failed collective shuts them down too, so the peers learn of it at
    // once although the duplicate keeps the socket open after Gloo closes its own descriptor. The destructor
    // closes them after Gloo's teardown.
    for (int i = 0; i < world_size_; ++i) {
      if (i == rank_) continue;
      const auto* self = dynamic_cast<const gloo::transport::tcp::Address*>(&context_->getPair(i)->address());
      const int fd = self != nullptr ? DupSocketBoundTo(self->getSockaddr()) : -1;
      if (fd < 0) {
        TP_LOG(WARNING) << "gloo rank " << rank_ << ": no socket found for the pair with rank " << i
                        << "; its death is noticed only through Gloo, and it does not learn of an abort here";
        continue;
      }
      sockets_.push_back(fd);
      socket_peers_.push_back(i);
    }
    if (!sockets_.empty() && pipe2(wake_, O_CLOEXEC) == 0) monitor_ = std::thread([this] { WatchPeers(); });
  }

  ~GlooCommunicator() override {
    if (monitor_.joinable()) {
      const char stop = 1;
      (void)!::write(wake_[1], &stop, 1);
      monitor_.join();
    }
    context_.reset();  // Gloo's pairs and event loop first: nothing reads the sockets after this
    device_.reset();
    for (int fd : sockets_) ::close(fd);
    for (int fd : wake_) {
      if (fd >= 0) ::close(fd);
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string name() const override { return "gloo"; }

  // Ring reduce-scatter then ring all-gather over unbound buffers this class owns. Chunk c of `data` is summed
  // along the ring starting at rank c, in that one order, by rank c - 1, and then copied to every rank: all
  // ranks end with the same bits. Owning every buffer a collective waits on is what lets Abort() wake it:
  // gloo::allreduce waits on a scratch buffer of its own, and a segment half-received when its sender died
  // is never failed by Gloo (see the top of this file), which left a survivor stuck until the op timeout.
  absl::Status AllReduceSum(float* data, size_t count) override {
    if (world_size_ == 1 || count == 0) return CheckUsable();
    TP_RETURN_IF_ERROR(Begin("all-reduce", count));
    const int n = world_size_;
    const size_t chunk = (count + n - 1) / n;
    auto range = [&](int c) {  // [offset, length) of chunk c, in floats
      const size_t begin = std::min(count, static_cast<size_t>(c) * chunk);
      return std::pair<size_t, size_t>(begin, std::min(count, begin + chunk) - begin);
    };
    // Grown once and reused: an all-reduce runs ~80 times per decode step, and a fresh vector here was a
    // malloc + zero-fill of up to count / n floats each time.
    if (scratch_.size() < chunk) scratch_.resize(chunk);
    float* const scratch = scratch_.data();
    std::unique_ptr<gloo::transport::UnboundBuffer> out, tmp;
    bool completed = false;
    try {
      out = context_->createUnboundBuffer(data, count * sizeof(float));
      tmp = context_->createUnboundBuffer(scratch, chunk * sizeof(float));
      Waitable waitable(this, {out.get(), tmp.get()});
      completed = true;
      // Reduce-scatter: after step s this rank's chunk (rank - s - 1) holds the sum over s + 2 ranks.
      for (int s = 0; s < n - 1 && completed; ++s) {
        const auto [send_at, send_len] = range(Mod(rank_ - s));
        const auto [recv_at, recv_len] = range(Mod(rank_ - s - 1));
        const uint64_t slot = Slot(s);
        if (recv_len > 0) tmp->recv(Mod(rank_ - 1), slot, 0, recv_len * sizeof(float));
        if (send_len > 0) out->send(Mod(rank_ + 1), slot, send_at * sizeof(float), send_len * sizeof(float));
        completed = (recv_len == 0 || WaitRecv(*tmp)) && (send_len == 0 || WaitSend(*out));
        for (size_t i = 0; completed && i < recv_len; ++i) data[recv_at + i] = scratch[i] + data[recv_at + i];
      }
      // All-gather: this rank holds chunk rank + 1 complete; step s passes on the chunk it got at step s - 1.
      for (int s = 0; s < n - 1 && completed; ++s) {
        const auto [send_at, send_len] = range(Mod(rank_ + 1 - s));
        const auto [recv_at, recv_len] = range(Mod(rank_ - s));
        const uint64_t slot = Slot(n - 1 + s);
        if (recv_len > 0) out->recv(Mod(rank_ - 1), slot, recv_at * sizeof(float), recv_len * sizeof(float));
        if (send_len > 0) out->send(Mod(rank_ + 1), slot, send_at * sizeof(float), send_len * sizeof(float));
        completed = (recv_len == 0 || WaitRecv(*out)) && (send_len == 0 || WaitSend(*out));
      }
    } catch (...) {
      return End("all-reduce", std::current_exception(), true);
    }
    return End("all-reduce", nullptr, completed);
  }

  // Ring all-gather straight into `recv`: step s passes on the block received at step s - 1.
  absl::Status AllGather(const float* send, size_t count, float* recv) override {
    if (world_size_ == 1) {
      if (send != recv) std::copy(send, send + count, recv);
      return CheckUsable();
    }
    if (count == 0) return CheckUsable();
    TP_RETURN_IF_ERROR(Begin("all-gather", count));
    if (send != recv + rank_ * count) std::memmove(recv + rank_ * count, send, count * sizeof(float));
    const size_t block = count * sizeof(float);
    std::unique_ptr<gloo::transport::UnboundBuffer> out;
    bool completed = false;
    try {
      out = context_->createUnboundBuffer(recv, world_size_ * block);
      Waitable waitable(this, {out.get()});
      completed = true;
      for (int s = 0; s < world_size_ - 1 && completed; ++s) {
        const uint64_t slot = Slot(s);
        out->recv(Mod(rank_ - 1), slot, Mod(rank_ - s - 1) * block, block);
        out->send(Mod(rank_ + 1), slot, Mod(rank_ - s) * block, block);
        completed = WaitRecv(*out) && WaitSend(*out);
      }
    } catch (...) {
      return End("all-gather", std::current_exception(), true);
    }
    return End("all-gather", nullptr, completed);
  }

  void Abort(const std::string& why) override {
    {
      absl::MutexLock lock(&mu_);
      if (!abort_reason_.empty()) return;
      abort_reason_ = why.empty() ? "aborted" : why;
      if (broken_.ok()) broken_ = absl::UnavailableError(abort_reason_);
      // Under mu_: a collective unregisters its buffers (under mu_) before destroying them. A wait that has
      // not started yet returns at once (the flags persist until a wait takes them).
      for (gloo::transport::UnboundBuffer* b : waitable_) {
        b->abortWaitRecv();
        b->abortWaitSend();
      }
    }
    ShutdownSockets();
  }

  std::string InFlight() const override {
    absl::MutexLock lock(&mu_);
    if (in_flight_op_ == nullptr) return "";
    return absl::StrCat(in_flight_op_, " #", next_tag_, " of ", in_flight_count_, " floats for ",
                        absl::FormatDuration(absl::Trunc(absl::Now() - in_flight_since_, absl::Milliseconds(100))));
  }

 private:
  // OK while no collective has failed and Abort() was not called.
  absl::Status CheckUsable() const {
    absl::MutexLock lock(&mu_);
    return broken_.ok() ? absl::OkStatus() : BrokenLocked();
  }

  absl::Status Begin(const char* op, size_t count) {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) return BrokenLocked();
    in_flight_op_ = op;
    in_flight_count_ = count;
    in_flight_since_ = absl::Now();
    return absl::OkStatus();
  }

  int Mod(int r) const { return ((r % world_size_) + world_size_) % world_size_; }
  // The same on every rank: collectives run in the same order, and each step of one has its own slot.
  uint64_t Slot(int step) const {
    absl::MutexLock lock(&mu_);
    return (static_cast<uint64_t>(next_tag_) << 16) | static_cast<uint64_t>(step);
  }
  // False when Abort() interrupted the wait; throws what Gloo throws (a closed pair, the op timeout).
  bool WaitRecv(gloo::transport::UnboundBuffer& b) { return b.waitRecv(nullptr, op_timeout_) && !Aborted(); }
  bool WaitSend(gloo::transport::UnboundBuffer& b) { return b.waitSend(nullptr, op_timeout_) && !Aborted(); }
  bool Aborted() const {
    absl::MutexLock lock(&mu_);
    return !abort_reason_.empty();
  }
  // The buffers a collective may wait on, for Abort(), while it lasts.
  class Waitable {
   public:
    Waitable(GlooCommunicator* c, std::vector<gloo::transport::UnboundBuffer*> buffers) : c_(c) {
      absl::MutexLock lock(&c_->mu_);
      c_->waitable_ = std::move(buffers);
      // Aborted before the buffers were known: make their first wait return at once.
      if (!c_->abort_reason_.empty()) {
        for (auto* b : c_->waitable_) {
          b->abortWaitRecv();
          b->abortWaitSend();
        }
      }
    }
    ~Waitable() {
      absl::MutexLock lock(&c_->mu_);
      c_->waitable_.clear();
    }

   private:
    GlooCommunicator* const c_;
  };

  // Ends the collective Begin() started; `error` is what Gloo threw, or null; `completed` false when a wait was
  // interrupted. A collective that returns after Abort() fails even when Gloo did not notice (its result may
  // be partial).
  absl::Status End(const char* op, std::exception_ptr error, bool completed) {
    absl::MutexLock lock(&mu_);
    in_flight_op_ = nullptr;
    ++next_tag_;
    if (!completed && error == nullptr && abort_reason_.empty()) {
      abort_reason_ = "a wait ended without its data";  // not expected: only Abort() interrupts a wait
    }
    if (!abort_reason_.empty()) {
      broken_ = absl::UnavailableError(abort_reason_);
      return absl::UnavailableError(absl::StrCat("gloo ", op, " (rank ", rank_, ") aborted: ", abort_reason_));
    }
    if (error == nullptr) return absl::OkStatus();
    broken_ = StatusFromException(op, error);
    ShutdownSockets();
    return broken_;
  }

  // The monitor thread: aborts as soon as a peer's end of a pair closes (its process died, or it aborted).
  // Gloo fails the operations it has queued on that pair by itself, but not a segment it is in the middle of
  // receiving; this ends that wait too, without waiting for the next LoadCommand. Ends when the destructor
  // writes to wake_, or after aborting.
  void WatchPeers() {
    std::vector<pollfd> fds;
    for (int fd : sockets_) fds.push_back({fd, POLLRDHUP, 0});
    fds.push_back({wake_[0], POLLIN, 0});
    while (true) {
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds.back().revents != 0) return;
      for (size_t i = 0; i + 1 < fds.size(); ++i) {
        if ((fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
          Abort(absl::StrCat("the connection to rank ", socket_peers_[i],
                             " closed (its process died, or it gave up on this group)"));
          return;
        }
      }
    }
  }

  // Both directions of every pair end: reads here and at the peer see end-of-stream. Thread-safe.
  void ShutdownSockets() const {
    for (int fd : sockets_) ::shutdown(fd, SHUT_RDWR);
  }

  absl::Status BrokenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::UnavailableError(
        absl::StrCat("gloo communicator (rank ", rank_, ") is unusable after an earlier failure: ",
                     broken_.message()));
  }

  const int rank_;
  const int world_size_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  const std::chrono::milliseconds op_timeout_;
  std::vector<float> scratch_;  // AllReduceSum's receive chunk (one collective at a time uses it)
  std::vector<int> sockets_;  // duplicates of the pairs' sockets (set in the constructor, then read-only)
  std::vector<int> socket_peers_;  // the peer rank of each of sockets_
  int wake_[2] = {-1, -1};         // a pipe: the destructor stops the monitor through it
  std::thread monitor_;            // WatchPeers(); joined by the destructor

  mutable absl::Mutex mu_;
  // Same sequence on every rank: collectives are issued in the same order. Written by the collective's
  // thread under mu_ (InFlight() reads it).
  uint32_t next_tag_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);       // the first failure; the communicator refuses calls after it
  std::string abort_reason_ ABSL_GUARDED_BY(mu_);  // non-empty once Abort() was called
  const char* in_flight_op_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<gloo::transport::UnboundBuffer*> waitable_ ABSL_GUARDED_BY(mu_);  // see Waitable
  size_t in_flight_count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time in_flight_since_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options,
                                                                     Store& store) {
  if (options.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("gloo world_size must be >= 1, got ", options.world_size));
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("gloo rank ", options.rank, " is outside [0, world_size ",
                                                   options.world_size, ")"));
  }
  if (options.timeout <= absl::ZeroDuration() || options.op_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gloo timeout and op_timeout must be positive");
  }
  std::shared_ptr<gloo::transport::Device> device;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.host;  // "" => Gloo resolves this machine's hostname
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (...) {
    absl::Status s = StatusFromException(
        absl::StrCat("device bind to '", options.host, "'"), std::current_exception());
    return absl::InvalidArgumentError(s.message());
  }
  auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world_size);
  context->setTimeout(absl::ToChronoMilliseconds(options.timeout));
  try {
    GlooStoreAdapter adapter(store, options.timeout);
    gloo::rendezvous::PrefixStore prefixed(options.prefix, adapter);
    context->connectFullMesh(prefixed, device);
  } catch (...) {
    return StatusFromException(absl::StrCat("rendezvous (prefix '", options.prefix, "', rank ",
                                            options.rank, " of ", options.world_size, ")"),
                               std::current_exception());
  }
  TP_LOG(DEBUG) << "gloo rank " << options.rank << "/" << options.world_size << " connected on "
                << device->str();
  return std::unique_ptr<Communicator>(
      std::make_unique<GlooCommunicator>(options, std::move(device), std::move(context)));
}

}  // namespace tpserve::comm
