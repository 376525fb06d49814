// Sends a workload through a LoadClient (one per API: gRPC GenerateStream, OpenAI HTTP streaming) in a closed
// loop (fixed concurrency) or an open loop (timed arrivals), and records per-request timings. The dispatcher
// here owns timing, concurrency, the run's end and cancellation; a client only sends one request and records it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/loadgen/workload.h"

namespace tpserve::bench {

// One request as the client saw it. Times are seconds since the run's start (steady clock).
struct RequestRecord {
  int index = 0;                 // issue order within the run
  int input_len_sent = -1;       // tokens sent when known up front (-1 for text/chat inputs)
  int output_len_asked = 0;      // max_new_tokens
  int prefix_id = -1;
  double start_s = 0;
  double first_token_s = -1;     // first message that carried tokens; -1 if none came
  double end_s = 0;              // the call ended
  std::vector<double> chunk_s;   // arrival time of each message that carried tokens
  std::vector<int> chunk_tokens; // tokens in that message (OpenAI: 1 per content chunk, see openai_protocol.h)
  int stream_tokens = 0;         // sum of chunk_tokens
  int stream_prompt_ids = 0;     // prompt_token_ids echoed in the first message (gRPC only)
  int prompt_tokens = 0;         // usage, as the server reported on the last message
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  bool got_usage = false;
  int finish_reason = 0;         // v1::FinishReason
  int status_code = 0;           // grpc::StatusCode; 0 = OK
  int http_status = 0;           // OpenAI API: the HTTP status of a failed request (then it names the failure)
  std::string error;
  double callback_s = 0;         // time this tool spent inside its own stream callbacks
  bool ok() const { return status_code == 0 && got_usage; }
  // A message carrying `tokens` > 0 tokens arrived at `t`.
  void AddChunk(double t, int tokens);
};

struct RunOptions {
  int concurrency = 1;        // max in flight; 0 = unlimited (open loop only)
  double request_rate = 0;    // req/s; 0 or inf = closed loop (send as soon as a slot frees)
  Arrival arrival = Arrival::kPoisson;
  double burstiness = 1.0;
  int num_requests = 0;       // 0 = until duration_s
  double duration_s = 0;      // 0 = until num_requests; stops issuing, then waits for in-flight requests
  double timeout_s = 600;     // per-request deadline
  uint64_t seed = 0;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): stop sending, cancel in-flight requests
};

struct RunResult {
  std::vector<RequestRecord> records;  // issue order
  double duration_s = 0;               // first send to last completion
  int peak_concurrency = 0;
  bool interrupted = false;
};

// Live counters for a progress display; read from any thread.
struct RunProgress {
  std::atomic<int> started{0};
  std::atomic<int> finished{0};
  std::atomic<int> in_flight{0};
  std::atomic<int64_t> tokens{0};
};

// What a call reports to the run it belongs to. Thread-safe.
class CallObserver {
 public:
  virtual ~CallObserver() = default;
  virtual double Now() const = 0;      // seconds since the run started (RequestRecord's clock)
  virtual void OnTokens(int n) = 0;    // for the progress display
  virtual void OnDone() = 0;           // exactly once per call, after its record is final
};

// One request in flight. Its client fills `record` (index, lengths and start_s are set before Send) from any
// thread until it calls CallObserver::OnDone; the dispatcher reads it only after that.
class Call {
 public:
  virtual ~Call() = default;
  // Best effort and thread-safe: the call ends soon with CANCELLED (still through OnDone).
  virtual void Cancel() = 0;
  RequestRecord record;
};

// An API's way of sending one request. Start may block briefly (not for the response).
class LoadClient {
 public:
  virtual ~LoadClient() = default;
  // Sends `spec` with `timeout_s` as its deadline; `call->record` is already initialised.
  virtual std::unique_ptr<Call> Start(const RequestSpec& spec, RequestRecord record, double timeout_s,
                                      CallObserver* observer) = 0;
};

// Runs `specs` (cycled when the run needs more requests than specs) through `client`. Blocks until every issued
// request has finished. INVALID_ARGUMENT for inconsistent options (neither a count nor a duration, ...).
absl::StatusOr<RunResult> RunLoad(LoadClient* client, const std::vector<RequestSpec>& specs,
                                  const RunOptions& options, RunProgress* progress);

}  // namespace tpserve::bench
