// Implementation of coordinator/group_membership.h.
#include "coordinator/group_membership.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/worker_protocol.h"

namespace tpserve::coordinator {

GroupMembership::GroupMembership(const GroupMembershipOptions& options) : options_(options) {
  ranks_.resize(options_.world_size);
  for (int r = 0; r < options_.world_size; ++r) ranks_[r].status.rank = r;
}

GroupMembership::Effects GroupMembership::Register(int rank, int world_size, uint32_t protocol_version,
                                                   const std::string& device, const std::string& hostname,
                                                   const std::string& peer, absl::Time now) {
  Effects fx;
  if (protocol_version != kWorkerProtocolVersion) {
    TP_LOG(ERROR) << "worker " << peer << " speaks worker protocol " << protocol_version << ", this coordinator "
                  << kWorkerProtocolVersion << "; telling it to exit";
    fx.refuse = absl::StrCat("coordinator speaks worker protocol ", kWorkerProtocolVersion, ", the worker ",
                             protocol_version, ": run the same tpserve release on the coordinator and every worker");
    return fx;
  }
  if (world_size != options_.world_size || rank < 0 || rank >= options_.world_size) {
    TP_LOG(ERROR) << "worker " << peer << " registered as rank " << rank << " of " << world_size
                  << ", but this coordinator runs a group of " << options_.world_size << "; telling it to exit";
    fx.refuse = absl::StrCat("coordinator expects --world-size ", options_.world_size, " and a rank in [0, ",
                             options_.world_size, ")");
    return fx;
  }
  Rank& r = ranks_[rank];
  if (r.status.connected) {
    TP_LOG(ERROR) << "rank " << rank << " registered twice (" << peer << "); refusing";
    fx.refuse = absl::StrCat("rank ", rank, " is already connected");
    return fx;
  }
  r.status.connected = true;
  r.status.loaded = false;
  r.status.device = device;
  r.status.hostname = hostname;
  r.status.last_seen = now;
  r.load_sent = false;
  r.kv_ready = false;
  TP_LOG(INFO) << "worker rank " << rank << " registered from " << hostname << " (" << peer << ", device " << device
               << ")";
  fx.send_load = MaybeStartLoad();
  return fx;
}

bool GroupMembership::MaybeStartLoad() {
  if (shutdown_ || group_loading_) return false;
  for (const auto& r : ranks_) {
    if (!r.status.connected) return false;
  }
  ++generation_;
  retry_at_ = absl::InfiniteFuture();
  group_loading_ = true;
  ready_ = false;
  for (auto& r : ranks_) r.load_sent = true;
  return true;
}

void GroupMembership::Disconnect(int rank) {
  Rank& lost = ranks_[rank];
  lost.status.connected = false;
  if (!shutdown_) {
    TP_LOG(WARNING) << "worker rank " << rank << " disconnected; the group is not ready until it returns";
  }
  ready_ = false;
  // Survivors must rebuild their communicator with the returning rank: they get a new LoadCommand (same model,
  // new rendezvous generation) when the group is whole again.
  AbandonFormation();
}

void GroupMembership::AbandonFormation() {
  group_loading_ = false;
  kv_allocating_ = false;
  for (auto& r : ranks_) {
    r.load_sent = false;
    r.kv_ready = false;
    r.status.loaded = false;
  }
}

void GroupMembership::Seen(int rank, absl::Time now) { ranks_[rank].status.last_seen = now; }

GroupMembership::Effects GroupMembership::Loaded(int rank, int generation, const LoadReport& report,
                                                 absl::Time now) {
  Effects fx;
  if (generation != generation_ || !group_loading_) return fx;  // an abandoned attempt's late answer
  if (!report.ok) {
    Fail(absl::FailedPreconditionError(absl::StrCat("worker rank ", rank, " failed to load: ", report.error)), now);
    return fx;
  }
  Rank& r = ranks_[rank];
  r.status.loaded = true;
  r.status.weight_bytes = report.weight_bytes;
  r.max_kv_blocks = report.max_kv_blocks;
  r.kv_bytes_per_block = report.kv_bytes_per_block;
  fx.allocate_kv_blocks = MaybeAllocateKv(now);
  return fx;
}

int GroupMembership::MaybeAllocateKv(absl::Time now) {
  if (kv_allocating_) return 0;
  int64_t blocks = std::numeric_limits<int64_t>::max();
  int64_t bytes_per_block = 0;
  for (const auto& r : ranks_) {
    if (!r.status.connected || !r.status.loaded) return 0;
    blocks = std::min(blocks, r.max_kv_blocks);
    bytes_per_block = std::max(bytes_per_block, r.kv_bytes_per_block);
  }
  if (options_.max_kv_blocks > 0) blocks = std::min<int64_t>(blocks, options_.max_kv_blocks);
  blocks = std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max());
  if (blocks <= 0) {
    Fail(absl::ResourceExhaustedError(
             "no KV cache blocks fit in the KV memory budget: raise --kv-cache-memory (or free device memory)"),
         now);
    return 0;
  }
  kv_allocating_ = true;
  num_kv_blocks_ = static_cast<int>(blocks);
  kv_bytes_per_block_ = bytes_per_block;
  return num_kv_blocks_;
}

void GroupMembership::KvReady(int rank, int generation, bool ok, const std::string& error, absl::Time now) {
  if (generation != generation_ || !kv_allocating_) return;  // an abandoned attempt's late answer
  if (!ok) {
    Fail(absl::ResourceExhaustedError(absl::StrCat("worker rank ", rank, " could not allocate its KV cache: ", error)),
         now);
    return;
  }
  ranks_[rank].kv_ready = true;
  if (std::all_of(ranks_.begin(), ranks_.end(), [](const Rank& r) { return r.kv_ready; })) {
    kv_allocating_ = false;
    group_loading_ = false;
    ready_ = true;
    formed_once_ = true;
    retry_backoff_ = absl::Seconds(1);
    TP_LOG(INFO) << "tensor-parallel group of " << options_.world_size << " ready (generation " << generation_
                 << ")";
  }
}

void GroupMembership::Fail(absl::Status error, absl::Time now) {
  AbandonFormation();
  if (!formed_once_) {
    load_error_ = std::move(error);
    TP_LOG(ERROR) << load_error_.message();
    return;
  }
  retry_at_ = now + retry_backoff_;
  TP_LOG(WARNING) << "re-forming the group (generation " << generation_ << ") failed: " << error.message()
                  << "; trying again in " << absl::FormatDuration(retry_backoff_);
  retry_backoff_ = std::min(2 * retry_backoff_, absl::Seconds(16));
}

GroupMembership::Effects GroupMembership::Tick(absl::Time now) {
  Effects fx;
  if (retry_at_ == absl::InfiniteFuture() || now < retry_at_) return fx;
  retry_at_ = absl::InfiniteFuture();  // a rank still away: its return starts the load
  fx.send_load = MaybeStartLoad();
  return fx;
}

GroupMembership::Effects GroupMembership::StepTimedOut(absl::Time now) {
  (void)now;
  Effects fx;
  if (shutdown_) return fx;
  ready_ = false;
  AbandonFormation();
  fx.send_load = MaybeStartLoad();  // a rank away: its return starts the load
  TP_LOG(WARNING) << "a step timed out; re-forming the group"
                  << (fx.send_load ? absl::StrCat(" (generation ", generation_, ")") : " when every rank is back");
  return fx;
}

void GroupMembership::RecordStep(int rank, double step_seconds, double allreduce_seconds) {
  ranks_[rank].status.last_step_seconds = step_seconds;
  ranks_[rank].status.last_allreduce_seconds = allreduce_seconds;
}

void GroupMembership::Shutdown() {
  shutdown_ = true;
  ready_ = false;
}

bool GroupMembership::IsReady(absl::Time now, const std::vector<bool>& answering) const {
  if (!ready_ || shutdown_) return false;
  for (size_t i = 0; i < ranks_.size(); ++i) {
    const Rank& r = ranks_[i];
    if (!r.status.connected || !r.kv_ready) return false;
    const bool answering_step = i < answering.size() && answering[i];
    if (!answering_step && now - r.status.last_seen > options_.heartbeat_timeout) return false;
  }
  return true;
}

std::vector<WorkerStatus> GroupMembership::Status() const {
  std::vector<WorkerStatus> out;
  for (const auto& r : ranks_) out.push_back(r.status);
  return out;
}

}  // namespace tpserve::coordinator
