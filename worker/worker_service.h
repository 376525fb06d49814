// The worker process: dials the coordinator's control plane, registers its rank, and serves the persistent
// Connect stream: load this rank's shard, allocate the KV cache, run one forward step per StepPlan (rank 0
// samples and returns token ids), answer heartbeats, exit on Shutdown. When the coordinator goes away the
// worker keeps its weights and registers again (the coordinator may have restarted).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/credentials.h"

namespace tpserve::worker {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:50052";  // the coordinator's --worker-port
  int rank = 0;
  int world_size = 1;
  std::string device = "cpu";       // "cpu" or "cuda:K"
  int threads = 0;                  // CPU kernel threads; 0 => from the coordinator, else all cores
  std::string cpu_isa = "auto";     // auto | amx | avx512 | avx2 | scalar
  std::string comm_host;            // address to bind for Gloo pairs ("" => 127.0.0.1 when the
                                    // coordinator is local, else this host's name)
  std::string dump_dir;             // debug: rank 0 writes each step's logits here
  absl::Duration connect_timeout = absl::Seconds(300);  // give up registering after this long
  // The control loop logs what it is in (a step and its collective, a load's rendezvous, ...) every period
  // once it has been in it longer than this (worker/phase_watchdog.h).
  absl::Duration watchdog_period = absl::Seconds(5);
  TlsFiles cluster_tls;  // mutual TLS to the coordinator: this worker's cert/key + the cluster CA
  std::string cluster_server_name;  // name the coordinator's certificate must carry ("" => host of coordinator)
  std::string cluster_token;  // when set: mutual proof of the token (common/cluster_auth.h) before anything else
};

// Runs until the coordinator sends Shutdown (OK), Stop() is called (OK), registration keeps failing for
// connect_timeout (UNAVAILABLE), or authentication fails either way (UNAUTHENTICATED: the coordinator refused
// this worker, or it could not prove it holds the cluster token; retrying would not change that).
absl::Status RunWorker(const WorkerOptions& options, std::atomic<bool>* stop);

}  // namespace tpserve::worker
