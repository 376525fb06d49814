// Implementation of bench/loadgen/load_runner.h. Each request is one ClientReadReactor whose callbacks run on
// gRPC's callback threads and only append timestamps, so the dispatcher thread is the only other thread.
#include "bench/loadgen/load_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

namespace tpserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0, Clock::time_point t) { return std::chrono::duration<double>(t - t0).count(); }

// Shared between the dispatcher and the reactors. Thread-safe through mu.
struct RunState {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  int peak = 0;
  Clock::time_point t0;
  RunProgress* progress = nullptr;
};

class StreamCall : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  StreamCall(RunState* state, const RequestSpec& spec, int index, double timeout_s) : state_(state) {
    record_.index = index;
    record_.input_len_sent = spec.expected_input_len;
    record_.output_len_asked = spec.output_len;
    record_.prefix_id = spec.prefix_id;
    request_ = spec.request;
    ctx_.set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  }

  void Start(v1::Generation::Stub* stub) {
    record_.start_s = Since(state_->t0, Clock::now());
    stub->async()->GenerateStream(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    const auto now = Clock::now();
    if (ok) {
      const double t = Since(state_->t0, now);
      const int n = response_.token_ids_size();
      if (response_.prompt_token_ids_size() > 0) record_.stream_prompt_ids = response_.prompt_token_ids_size();
      if (n > 0) {
        if (record_.first_token_s < 0) record_.first_token_s = t;
        record_.chunk_s.push_back(t);
        record_.chunk_tokens.push_back(n);
        record_.stream_tokens += n;
        state_->progress->tokens.fetch_add(n, std::memory_order_relaxed);
      }
      if (response_.has_usage()) {
        record_.got_usage = true;
        record_.prompt_tokens = response_.usage().prompt_tokens();
        record_.completion_tokens = response_.usage().completion_tokens();
        record_.cached_prompt_tokens = response_.usage().cached_prompt_tokens();
      }
      if (response_.finish_reason() != 0) record_.finish_reason = response_.finish_reason();
      StartRead(&response_);
    }
    record_.callback_s += Since(now, Clock::now());
  }

  void OnDone(const grpc::Status& s) override {
    const auto now = Clock::now();
    record_.end_s = Since(state_->t0, now);
    record_.status_code = s.error_code();
    record_.error = s.error_message();
    if (s.ok() && !record_.got_usage) {
      record_.status_code = grpc::StatusCode::UNKNOWN;
      record_.error = "stream ended without a final message carrying usage";
    }
    record_.callback_s += Since(now, Clock::now());
    std::lock_guard<std::mutex> l(state_->mu);
    done_ = true;
    --state_->in_flight;
    state_->progress->in_flight.store(state_->in_flight, std::memory_order_relaxed);
    state_->progress->finished.fetch_add(1, std::memory_order_relaxed);
    state_->cv.notify_all();
  }

  void Cancel() { ctx_.TryCancel(); }
  bool done() const { return done_; }  // read under RunState::mu
  RequestRecord TakeRecord() { return std::move(record_); }

 private:
  RunState* state_;
  grpc::ClientContext ctx_;
  v1::GenerateRequest request_;
  v1::GenerateStreamResponse response_;
  RequestRecord record_;
  bool done_ = false;
};

bool Stopped(const RunOptions& o) { return o.stop != nullptr && o.stop->load(); }

}  // namespace

absl::StatusOr<RunResult> RunLoad(v1::Generation::Stub* stub, const std::vector<RequestSpec>& specs,
                                  const RunOptions& o, RunProgress* progress) {
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

  std::vector<std::unique_ptr<StreamCall>> calls;
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
    calls.push_back(std::make_unique<StreamCall>(&state, specs[i % specs.size()], i, o.timeout_s));
    state.progress->started.fetch_add(1, std::memory_order_relaxed);
    calls.back()->Start(stub);
  }

  // Drain. On stop, cancel whatever is still running (outside the lock: cancellation may run OnDone).
  bool cancelled = false;
  std::unique_lock<std::mutex> l(state.mu);
  while (state.in_flight > 0) {
    if (Stopped(o) && !cancelled) {
      cancelled = true;
      std::vector<StreamCall*> live;
      for (auto& c : calls) {
        if (!c->done()) live.push_back(c.get());
      }
      l.unlock();
      for (StreamCall* c : live) c->Cancel();
      l.lock();
      continue;
    }
    state.cv.wait_for(l, poll);
  }
  l.unlock();
  result.interrupted = Stopped(o);
  result.peak_concurrency = state.peak;
  for (auto& c : calls) {
    result.records.push_back(c->TakeRecord());
    result.duration_s = std::max(result.duration_s, result.records.back().end_s);
  }
  return result;
}

}  // namespace tpserve::bench
