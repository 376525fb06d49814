// `tpserve worker`: one tensor-parallel worker process that registers with a coordinator.
#include <csignal>
#include <cstdio>

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/shared_flags.h"
#include "common/cluster_auth.h"
#include "common/log.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:50052", "the coordinator's worker control-plane address (HOST:PORT)");
ABSL_FLAG(int, rank, 0, "this worker's tensor-parallel rank, in [0, --world-size)");
ABSL_FLAG(int, world_size, 1, "tensor-parallel degree of the group");
ABSL_FLAG(std::string, comm_host, "", "address peers use to reach this worker for Gloo (default: hostname)");
ABSL_FLAG(std::string, dump_dir, "", "debug: rank 0 writes each step's logits (float32) into this directory");
ABSL_FLAG(int, connect_timeout, 300, "seconds to keep trying to reach the coordinator before exiting");
ABSL_FLAG(std::string, cluster_server_name, "",
          "mutual TLS: the name the coordinator's certificate must carry (default: the host of --coordinator); the "
          "Kubernetes manifests use one cluster certificate named tpserve-coordinator");

namespace tpserve::cli {

int WorkerCommand() {
  // Gloo writes to its peers with writev(2), which raises SIGPIPE when a peer has died: by default that kills
  // this survivor too, silently, whenever its write wins the race with Gloo's event loop reading the peer's
  // end-of-stream. Workers that `tpserve serve` starts inherit its SIG_IGN; standalone ones (Kubernetes,
  // Auth/WorkerAuthTest) did not. Ignored, the write fails with EPIPE and the collective with UNAVAILABLE.
  signal(SIGPIPE, SIG_IGN);
  worker::WorkerOptions o;
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.rank = absl::GetFlag(FLAGS_rank);
  o.world_size = absl::GetFlag(FLAGS_world_size);
  o.device = absl::GetFlag(FLAGS_device);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.cpu_isa = absl::GetFlag(FLAGS_cpu_isa);
  o.comm_host = absl::GetFlag(FLAGS_comm_host);
  o.dump_dir = absl::GetFlag(FLAGS_dump_dir);
  o.connect_timeout = absl::Seconds(absl::GetFlag(FLAGS_connect_timeout));
  o.cluster_tls = {absl::GetFlag(FLAGS_cluster_cert), absl::GetFlag(FLAGS_cluster_key), absl::GetFlag(FLAGS_cluster_ca)};
  o.cluster_server_name = absl::GetFlag(FLAGS_cluster_server_name);
  if (!absl::GetFlag(FLAGS_cluster_token_file).empty()) {
    auto token = cluster_auth::ReadClusterToken(absl::GetFlag(FLAGS_cluster_token_file));
    if (!token.ok()) {
      std::fprintf(stderr, "tpserve worker: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    o.cluster_token = *token;
  }
  std::atomic<bool> stop{false};
  absl::Status s = worker::RunWorker(o, &stop);
  if (!s.ok()) {
    std::fprintf(stderr, "tpserve worker: %s\n", std::string(s.message()).c_str());
    return absl::IsInvalidArgument(s) ? 2 : 1;
  }
  return 0;
}

}  // namespace tpserve::cli
