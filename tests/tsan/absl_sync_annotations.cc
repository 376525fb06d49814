// ThreadSanitizer build only (scripts/tsan-tests.sh, -DTPSERVE_TSAN=ON): makes Debian's Abseil locks visible
// to TSan. libabsl_synchronization.so is compiled without TSan, so absl::Mutex::Lock/Unlock, CondVar::Wait and
// Notification::Notify happen inside code TSan does not see, and every access guarded by an absl::Mutex (ours
// and gRPC's, whose grpc_core::Mutex is an absl::Mutex) would be reported as a race. Linked first into every
// binary of the TSan build, this library defines those functions itself (the dynamic linker binds all callers,
// gRPC included, to the first definition), calls Abseil's through dlsym(RTLD_NEXT), and tells TSan about the
// happens-before edge each one creates: __tsan_acquire after a lock is taken, __tsan_release before it is let go.
// What Abseil itself does under the lock is not annotated: the lock's word is Abseil's, not ours.
#include <dlfcn.h>
#include <time.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/config.h"
// Condition keeps its evaluator private and Abseil does not export Condition::Eval; this file alone reads it.
#define private public
#include "absl/synchronization/mutex.h"
#undef private
#include "absl/synchronization/notification.h"

namespace {

// Abseil's own definition of a symbol spelled `_ZN4absl<ns>` + rest, where <ns> is the inline namespace
// (Debian 12: "debian3"), or abort.
template <typename Fn>
Fn Real(const char* rest, bool konst = false) {
  const std::string ns = ABSL_INTERNAL_TOKEN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  std::string name = std::string(konst ? "_ZNK4absl" : "_ZN4absl") + std::to_string(ns.size()) + ns + rest;
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan absl shim: %s not found: %s\n", name.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

bool EvalCondition(const absl::Condition& c) { return c.eval_ == nullptr || (*c.eval_)(&c); }

void SleepBriefly() {
  timespec ts{0, 100 * 1000};
  nanosleep(&ts, nullptr);
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderLock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderUnlock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  static auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}

bool Mutex::ReaderTryLock() {
  static auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}

// Conditions are evaluated by the waiting thread itself, polling: Abseil evaluates a waiter's condition in
// whichever thread unlocks the mutex, and wakes the waiter through its own futex, so the waiter's captured
// state would be read by a thread TSan has no edge from. Polling every 100 us costs latency in this build only.
void Mutex::Await(const Condition& cond) {
  while (!EvalCondition(cond)) {
    Unlock();
    SleepBriefly();
    Lock();
  }
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!EvalCondition(cond)) {
    if (absl::Now() >= deadline) return false;
    Unlock();
    SleepBriefly();
    Lock();
  }
  return true;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  return AwaitWithTimeout(cond, deadline - absl::Now());
}

void Mutex::LockWhen(const Condition& cond) {
  Lock();
  Await(cond);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  Lock();
  return AwaitWithTimeout(cond, timeout);
}

void CondVar::Wait(Mutex* mu) {
  static auto real = Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, absl::Duration)>(
      "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  bool r = real(this, mu, timeout);
  __tsan_acquire(mu);
  return r;
}

void Notification::Notify() {
  static auto real = Real<void (*)(Notification*)>("12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static auto real = Real<void (*)(const Notification*)>("12Notification19WaitForNotificationEv", true);
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  static auto real = Real<bool (*)(const Notification*, absl::Duration)>(
      "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE", true);
  bool r = real(this, timeout);
  if (r) __tsan_acquire(const_cast<Notification*>(this));
  return r;
}

ABSL_NAMESPACE_END
}  // namespace absl
