// Implementation of bench/loadgen/load_runner.h. The dispatcher is the only thread that issues requests; calls
// finish on their client's threads and only touch RunState under its mutex.
#include "bench/loadgen/load_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

namespace tpserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0, Clock::time_point t) { return std::chrono::duration<double>(t - t0).count(); }

// Shared between the dispatcher and the calls. Thread-safe through mu.
struct RunState {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  int peak = 0;
  Clock::time_point t0;
  RunProgress* progress = nullptr;
};

// The observer of one call: knows which call finished, so the dispatcher cancels only live ones.
class CallSlot : public CallObserver {
 public:
  explicit CallSlot(RunState* state) : state_(state) {}
  double Now() const override { return Since(state_->t0, Clock::now()); }
  void OnTokens(int n) override { state_->progress->tokens.fetch_add(n, std::memory_order_relaxed); }
  void OnDone() override {
    std::lock_guard<std::mutex> l(state_->mu);
    done_ = true;
    --state_->in_flight;
    state_->progress->in_flight.store(state_->in_flight, std::memory_order_relaxed);
    state_->progress->finished.fetch_add(1, std::memory_order_relaxed);
    state_->cv.notify_all();
  }
  bool done() const { return done_; }  // read under RunState::mu

 private:
  RunState* state_;
  bool done_ = false;
};

bool Stopped(const RunOptions& o) { return o.stop != nullptr && o.stop->load(); }

}  // namespace

void RequestRecord::AddChunk(double t, int tokens) {
  if (tokens <= 0) return;
  if (first_token_s < 0) first_token_s = t;
  chunk_s.push_back(t);
  chunk_tokens.push_back(tokens);
  stream_tokens += tokens;
}

absl::StatusOr<RunResult> RunLoad(LoadClient* client, const std::vector<RequestSpec>& specs, const RunOptions& o,
                                  RunProgress* progress) {
  if (specs.empty()) return absl::InvalidArgumentError("no requests to send");
  if (o.num_requests <= 0 && o.duration_s <= 0) {
    return absl::InvalidArgumentError("give --num-requests or --duration so the run ends");
  }
  const bool open_loop = o.request_rate > 0 && !std::isinf(o.request_rate);
  if (!open_loop && o.concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency must be >= 1 in a closed loop (no --request-rate)");
  }
  if (open_loop && o.arrival == Arrival::kPoisson && !(o.burstiness > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--burstiness must be > 0, got ", o.burstiness));
  }
  RunProgress local_progress;
  RunState state;
  state.progress = progress != nullptr ? progress : &local_progress;
  const int gap_count =
      o.num_requests > 0 ? o.num_requests
                         : static_cast<int>(std::min(1e6, std::ceil(o.request_rate * o.duration_s * 2) + 16));
  const std::vector<double> gaps =
      open_loop ? ArrivalGaps(o.arrival, o.request_rate, o.burstiness, gap_count, o.seed) : std::vector<double>();
  const int limit = o.concurrency > 0 ? o.concurrency : 1 << 30;

  // Slots live in a deque: calls keep pointers to them.
  std::deque<CallSlot> slots;
  std::vector<std::unique_ptr<Call>> calls;
  RunResult result;
  state.t0 = Clock::now();
  Clock::time_point next_arrival = state.t0;
  const auto poll = std::chrono::milliseconds(50);
  for (int i = 0; o.num_requests <= 0 || i < o.num_requests; ++i) {
    if (Stopped(o)) break;
    if (open_loop) {
      next_arrival += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gaps[i % gaps.size()]));
      while (!Stopped(o) && Clock::now() < next_arrival) {
        std::this_thread::sleep_for(std::min<Clock::duration>(poll, next_arrival - Clock::now()));
      }
      if (Stopped(o)) break;
    }
    if (o.duration_s > 0 && Since(state.t0, Clock::now()) >= o.duration_s) break;
    {
      std::unique_lock<std::mutex> l(state.mu);
      while (state.in_flight >= limit && !Stopped(o)) state.cv.wait_for(l, poll);
      if (Stopped(o)) break;
      ++state.in_flight;
      state.peak = std::max(state.peak, state.in_flight);
      state.progress->in_flight.store(state.in_flight, std::memory_order_relaxed);
    }
    // The closed loop's duration check must also apply after waiting for a slot.
    if (o.duration_s > 0 && Since(state.t0, Clock::now()) >= o.duration_s) {
      std::lock_guard<std::mutex> l(state.mu);
      --state.in_flight;
      break;
    }
    const RequestSpec& spec = specs[i % specs.size()];
    RequestRecord record;
    record.index = i;
    record.input_len_sent = spec.expected_input_len;
    record.output_len_asked = spec.output_len;
    record.prefix_id = spec.prefix_id;
    record.start_s = Since(state.t0, Clock::now());
    slots.emplace_back(&state);
    state.progress->started.fetch_add(1, std::memory_order_relaxed);
    std::unique_ptr<Call> call = client->Start(spec, std::move(record), o.timeout_s, &slots.back());
    std::lock_guard<std::mutex> l(state.mu);  // Cancel() below reads `calls` under the lock
    calls.push_back(std::move(call));
  }

  // Drain. On stop, cancel whatever is still running (outside the lock: cancellation may run OnDone).
  bool cancelled = false;
  std::unique_lock<std::mutex> l(state.mu);
  while (state.in_flight > 0) {
    if (Stopped(o) && !cancelled) {
      cancelled = true;
      std::vector<Call*> live;
      for (size_t k = 0; k < calls.size(); ++k) {
        if (!slots[k].done()) live.push_back(calls[k].get());
      }
      l.unlock();
      for (Call* c : live) c->Cancel();
      l.lock();
      continue;
    }
    state.cv.wait_for(l, poll);
  }
  l.unlock();
  result.interrupted = Stopped(o);
  result.peak_concurrency = state.peak;
  for (auto& c : calls) {
    result.records.push_back(std::move(c->record));
    result.duration_s = std::max(result.duration_s, result.records.back().end_s);
  }
  return result;
}

}  // namespace tpserve::bench
