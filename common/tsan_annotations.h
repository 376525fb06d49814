// ThreadSanitizer happens-before annotations for hand-offs made inside uninstrumented libraries (Debian's gRPC);
// they compile to nothing without TSan. The other half of each edge is in tests/tsan/grpc_batch_annotations.cc,
// linked only into the TSan build.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define TPSERVE_TSAN_ENABLED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TPSERVE_TSAN_ENABLED 1
#endif
#endif

#ifdef TPSERVE_TSAN_ENABLED
#include <sanitizer/tsan_interface.h>
#endif

namespace tpserve {

// Call first thing in a gRPC server reactor's OnDone, with the reactor (as grpc::internal::ServerReactor*):
// libgrpc++ runs OnDone on its executor after the call's last callback, an edge TSan cannot see; the TSan shim
// releases the reactor when it schedules OnDone. Without it, `delete this` there and gRPC's teardown of the call
// after it read as races with the reactor's last callback.
inline void TsanAcquire(const void* addr) {
#ifdef TPSERVE_TSAN_ENABLED
  __tsan_acquire(const_cast<void*>(addr));
#else
  (void)addr;
#endif
}

// Call last thing in a server reactor's OnCancel that touches state (and TsanAcquire(this) first thing there):
// libgrpc++ runs OnCancel on its executor and then drops the call's reference inside libgrpc++, where TSan does
// not see it, so OnDone (which acquires the reactor) would not follow what OnCancel did. The shim releases the
// reactor when it hands OnCancel to the executor.
inline void TsanRelease(const void* addr) {
#ifdef TPSERVE_TSAN_ENABLED
  __tsan_release(const_cast<void*>(addr));
#else
  (void)addr;
#endif
}

}  // namespace tpserve
