// ThreadSanitizer build only (scripts/tsan-tests.sh, -DTPSERVE_TSAN=ON): makes gRPC's batch hand-offs visible
// to TSan. Every gRPC C++ operation (a reactor's StartRead/StartWrite/Finish, a sync client's Read/Write/Finish)
// fills a CallOpSet in header code compiled into our binaries, hands it to gRPC core with grpc_call_start_batch,
// and gets it back on another thread: as a tag from grpc_completion_queue_next/pluck (sync and async API), or
// through the tag's functor_run (callback API: CallbackWithSuccessTag, CallbackWithStatusTag). Debian's libgrpc
// is not built with TSan, so the real happens-before edge of that round trip (gRPC's lock-free queues and
// combiners) is invisible: every streaming call was reported as a race between two gRPC frames, and a reactor's
// `delete this` in OnDone against the writes made before Finish(), which gRPC orders before OnDone.
//
// Linked first into every binary of the TSan build (beside absl_sync_annotations.cc), this file defines those
// three entry points itself (the dynamic linker binds libgrpc++'s calls to the first definition) and forwards
// to gRPC's through dlsym(RTLD_NEXT):
//   grpc_call_start_batch          __tsan_release(tag) after the caller filled the batch, before core sees it;
//   grpc_completion_queue_next/pluck  __tsan_acquire(tag) when an operation completes;
//   a callback-API tag             its functor_run is swapped for a trampoline that does __tsan_acquire(tag),
//                                  puts the original back and runs it (core calls functor_run exactly once per
//                                  batch, and a tag is in at most one batch at a time).
// A server reactor's OnDone is not a batch's completion: when the last callback drops the call's refcount,
// libgrpc++'s ServerCallbackCall::ScheduleOnDone hands CallOnDone (OnDone, then the call's teardown) to gRPC's
// executor. That function is defined here too: it does __tsan_release(reactor) before forwarding, and each of
// our reactors' OnDone starts with TsanAcquire(this) (common/tsan_annotations.h), which orders OnDone and the
// teardown after it behind everything that happened on the call.
// For those two libgrpc++ functions to be the shim's, the shim must come before libgrpc++ in the dynamic
// linker's search order (CMakeLists.txt puts it first on every link line); until 2026-12-05 it came after, so
// the release above was never made, and the worker-kill tests failed on the teardown below. A constructor here
// now aborts when any interposed function resolves elsewhere.
// "The last callback" is the one whose Unref (an acq_rel fetch_sub on ServerCallbackCall::callbacks_outstanding_)
// took the count to zero, and that Unref is not always in instrumented code: after a cancellation (the peer died
// or cancelled), libgrpc++ runs the reactor's OnCancel on its executor and then MaybeDone() inside libgrpc++
// (src/cpp/server/server_callback.cc, ServerCallbackCall::CallOnCancel's closure:
// `arg->reactor->OnCancel(); arg->call->MaybeDone();`). When that hidden fetch_sub is the last one, TSan never
// sees it acquire the other callbacks' releases, and OnDone's `delete this` and CallOnDone's teardown (the tags'
// std::function, the CallOpSets) read as races with the other callbacks (OnReadDone(false) after a worker's
// kill, the Finish batch). So ScheduleOnDone first acquires the count itself, as that fetch_sub does. And
// CallOnCancel, which hands OnCancel to the executor, releases the reactor first; a reactor whose OnCancel
// touches state starts it with TsanAcquire(this) and ends it with TsanRelease(this), because its hidden Unref
// follows OnCancel.
// Only edges gRPC guarantees are added: the batch's completion follows its start. Anything our code does
// between two batches is still checked.
#include <dlfcn.h>
#include <link.h>
#include <sanitizer/tsan_interface.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include <grpc/grpc.h>
#include <grpcpp/support/server_callback.h>  // ServerCallbackCall (see ScheduleOnDone below)

namespace {

using FunctorRun = void (*)(grpc_completion_queue_functor*, int);

template <typename Fn>
Fn Next(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan grpc shim: %s not found: %s\n", name, dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

// The distinct functor_run functions seen so far (a handful: the tag classes' StaticRun in each object that
// instantiates them, libgrpc++'s own functors), each with a trampoline of its own. Relaxed atomics: a slot is
// written once, before any functor is pointed at its trampoline, and read only by that trampoline after gRPC's
// hand-off; atomics keep the shim from adding happens-before edges TSan would then credit to our code.
constexpr int kMaxRuns = 32;
std::atomic<FunctorRun> g_runs[kMaxRuns];
std::atomic<int> g_num_runs{0};

template <int I>
void Trampoline(grpc_completion_queue_functor* functor, int ok) {
  __tsan_acquire(functor);
  FunctorRun run = g_runs[I].load(std::memory_order_relaxed);
  functor->functor_run = run;  // as gRPC C++ set it: the next batch on this tag wraps it again
  run(functor, ok);
}

template <int... I>
constexpr std::array<FunctorRun, sizeof...(I)> MakeTrampolines(std::integer_sequence<int, I...>) {
  return {&Trampoline<I>...};
}
constexpr auto kTrampolines = MakeTrampolines(std::make_integer_sequence<int, kMaxRuns>());

// The trampoline for `run` (registering it on first sight), or nullptr when `run` is one already.
FunctorRun TrampolineFor(FunctorRun run) {
  for (FunctorRun t : kTrampolines) {
    if (t == run) return nullptr;
  }
  while (true) {
    const int n = g_num_runs.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) {
      if (g_runs[i].load(std::memory_order_relaxed) == run) return kTrampolines[i];
    }
    if (n == kMaxRuns) {
      std::fprintf(stderr, "tsan grpc shim: more than %d functor_run functions\n", kMaxRuns);
      std::abort();
    }
    // Claim slot n; a racing registration of another function retries.
    FunctorRun expected = nullptr;
    if (g_runs[n].compare_exchange_strong(expected, run, std::memory_order_relaxed)) {
      g_num_runs.store(n + 1, std::memory_order_release);
      return kTrampolines[n];
    }
    if (expected == run) return kTrampolines[n];
  }
}

// True when `addr` lies in an executable segment of a loaded object. A callback-API tag starts with
// functor_run (code); a CallOpSet or any other CompletionQueueTag starts with its vtable pointer (read-only
// data), so this tells the two kinds of tag apart.
bool IsCode(uintptr_t addr) {
  struct Query {
    uintptr_t addr;
    bool found;
  } q{addr, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* q = static_cast<Query*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0) continue;
          const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
          if (q->addr >= start && q->addr < start + ph.p_memsz) {
            q->found = true;
            return 1;
          }
        }
        return 0;
      },
      &q);
  return q.found;
}

// Whether `tag` is a callback-API functor: gRPC's tags are object pointers; small or misaligned values (an
// async user's integer tags) are never dereferenced.
bool IsFunctor(void* tag) {
  const auto p = reinterpret_cast<uintptr_t>(tag);
  if (p < 65536 || p % alignof(void*) != 0) return false;
  const auto first = reinterpret_cast<uintptr_t>(static_cast<grpc_completion_queue_functor*>(tag)->functor_run);
  return IsCode(first);
}

// Aborts unless `name` resolves to this library's definition: a shim placed after the library it wraps in the
// search order is silently never called (see the header).
void CheckInterposed(const char* name) {
  Dl_info self{}, found{};
  void* f = dlsym(RTLD_DEFAULT, name);
  const bool ok = dladdr(reinterpret_cast<void*>(&CheckInterposed), &self) != 0 && f != nullptr &&
                  dladdr(f, &found) != 0 && found.dli_fbase == self.dli_fbase;
  if (!ok) {
    std::fprintf(stderr,
                 "tsan grpc shim: %s resolves to %s, not to this shim: libtpserve_tsan_shim.so must come before "
                 "libgrpc++/libgrpc on the link line (CMakeLists.txt)\n",
                 name, f == nullptr ? "nothing" : (found.dli_fname != nullptr ? found.dli_fname : "?"));
    std::abort();
  }
}

__attribute__((constructor)) void CheckAllInterposed() {
  for (const char* name : {"grpc_call_start_batch", "grpc_completion_queue_next", "grpc_completion_queue_pluck",
                           "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb",
                           "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE"}) {
    CheckInterposed(name);
  }
}

}  // namespace

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops, void* tag,
                                      void* reserved) {
  static auto real = Next<grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*, void*)>(
      "grpc_call_start_batch");
  // An empty batch completes too (with its tag), so it is wrapped like any other.
  if (IsFunctor(tag)) {
    auto* functor = static_cast<grpc_completion_queue_functor*>(tag);
    if (FunctorRun t = TrampolineFor(functor->functor_run)) functor->functor_run = t;
  }
  __tsan_release(tag);
  return real(call, ops, nops, tag, reserved);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline, void* reserved) {
  static auto real = Next<grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*)>("grpc_completion_queue_next");
  grpc_event ev = real(cq, deadline, reserved);
  if (ev.type == GRPC_OP_COMPLETE) __tsan_acquire(ev.tag);
  return ev;
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag, gpr_timespec deadline,
                                       void* reserved) {
  static auto real =
      Next<grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*)>("grpc_completion_queue_pluck");
  grpc_event ev = real(cq, tag, deadline, reserved);
  if (ev.type == GRPC_OP_COMPLETE) __tsan_acquire(ev.tag);
  return ev;
}

}  // extern "C"

namespace grpc::internal {

// ServerCallbackCall::reactor() and callbacks_outstanding_ are private (the real ScheduleOnDone uses both); an
// explicit instantiation may name a private member, which is how this reads them.
struct ReactorMember {
  using type = ServerReactor* (ServerCallbackCall::*)();
  friend type Get(ReactorMember);
};
struct RefcountMember {
  using type = std::atomic_int ServerCallbackCall::*;
  friend type Get(RefcountMember);
};
template <typename Tag, typename Tag::type M>
struct Expose {
  friend typename Tag::type Get(Tag) { return M; }
};
template struct Expose<ReactorMember, &ServerCallbackCall::reactor>;
template struct Expose<RefcountMember, &ServerCallbackCall::callbacks_outstanding_>;

// Called once, by whoever's Unref() took callbacks_outstanding_ to zero (grpcpp/support/server_callback.h,
// MaybeDone: `if (Unref() == 1) ScheduleOnDone(...)`).
void ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  static auto real = Next<void (*)(ServerCallbackCall*, bool)>("_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  // The acquire half of that last acq_rel Unref, which TSan misses when it ran inside libgrpc++ (CallOnCancel's
  // closure): every earlier callback's Unref released the count.
  __tsan_acquire(&(this->*Get(RefcountMember{})));
  __tsan_release((this->*Get(ReactorMember{}))());
  real(this, inline_ondone);
}

// Runs OnCancel inline (an inlineable reactor) or hands it to gRPC's executor (ours), after Ref() so that the
// call outlives it (src/cpp/server/server_callback.cc, ServerCallbackCall::CallOnCancel).
void ServerCallbackCall::CallOnCancel(ServerReactor* reactor) {
  static auto real = Next<void (*)(ServerCallbackCall*, ServerReactor*)>(
      "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE");
  __tsan_release(reactor);
  real(this, reactor);
}

}  // namespace grpc::internal
