// Gloo over TCP: CPU collectives between tensor-parallel workers, rendezvous through our comm::Store.
// All-reduce is Gloo's ring (reduce-scatter + all-gather): each chunk is summed along one fixed ring
// order by one rank and then copied to the others, so every rank gets bitwise-identical results.
// Gloo reports failures by throwing; every call catches them here and returns a Status (timeouts become
// DEADLINE_EXCEEDED), and a failed communicator refuses further calls (its pairs are in an unknown state).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/common/error.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
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

void SumFloat(void* c, const void* a, const void* b, size_t n) {
  float* out = static_cast<float*>(c);
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(int rank, int world_size, std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::Context> context, absl::Duration timeout)
      : rank_(rank),
        world_size_(world_size),
        device_(std::move(device)),
        context_(std::move(context)),
        timeout_(absl::ToChronoMilliseconds(timeout)) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string name() const override { return "gloo"; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (!broken_.ok()) return Broken();
    if (world_size_ == 1 || count == 0) return absl::OkStatus();
    try {
      gloo::AllreduceOptions opts(context_);
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      opts.setOutput(data, count);
      opts.setReduceFunction(&SumFloat);
      opts.setTag(next_tag_++);
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    } catch (...) {
      broken_ = StatusFromException("all-reduce", std::current_exception());
      return broken_;
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(const float* send, size_t count, float* recv) override {
    if (!broken_.ok()) return Broken();
    if (world_size_ == 1) {
      if (send != recv) std::copy(send, send + count, recv);
      return absl::OkStatus();
    }
    if (count == 0) return absl::OkStatus();
    try {
      gloo::AllgatherOptions opts(context_);
      // Gloo reads the input only; the cast is for its non-const buffer type.
      opts.setInput(const_cast<float*>(send), count);
      opts.setOutput(recv, count * world_size_);
      opts.setTag(next_tag_++);
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    } catch (...) {
      broken_ = StatusFromException("all-gather", std::current_exception());
      return broken_;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Broken() const {
    return absl::UnavailableError(
        absl::StrCat("gloo communicator (rank ", rank_, ") is unusable after an earlier failure: ",
                     broken_.message()));
  }

  const int rank_;
  const int world_size_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  const std::chrono::milliseconds timeout_;
  uint32_t next_tag_ = 1;  // same sequence on every rank: collectives are issued in the same order
  absl::Status broken_;
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
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gloo timeout must be positive");
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
  return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(
      options.rank, options.world_size, std::move(device), std::move(context), options.timeout));
}

}  // namespace tpserve::comm
