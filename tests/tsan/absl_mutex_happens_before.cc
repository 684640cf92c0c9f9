// absl::Mutex, told to ThreadSanitizer (`make tsan` only).
//
// gRPC's mutexes are absl::Mutex (grpc_core::Mutex, grpc::internal::Mutex),
// and Debian's Abseil is not built with TSan, so its Mutex carries none of
// the annotations Abseil adds to TSan builds: TSan sees no ordering through
// it. Some of what it guards is instrumented, because gRPC's inline
// templates run in our binaries: e.g. a ServerUnaryReactor finished by the
// batch thread before the handler returned keeps its status in a backlog
// under reactor_mu_, which InternalBindCall reads on the handler's thread;
// TSan reported that as a race.
//
// Each public locking entry point of absl::Mutex and absl::CondVar is
// interposed (defined here, so every caller through the PLT, in libgrpc and
// libgrpc++ as in our code, reaches this one) and forwarded to Abseil's,
// with the edges a mutex makes: unlocking releases on the mutex's address,
// locking acquires it. A reader lock acquires what writers released, and
// what readers release (on the mutex's address + 1) is acquired only by a
// writer, so two readers are never ordered by the lock, as with TSan's own
// reader-writer locks. Waiting (CondVar::Wait*, Mutex::Await*) unlocks and
// locks again. Linked, with grpc_happens_before.cc, into every executable of
// a -DATTN_SANITIZE=thread build.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include <sanitizer/tsan_interface.h>

#include "absl/base/config.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

// The entry points below are out-of-line in this release; later ones make
// some of them inline, which would bypass the interposers without a word.
static_assert(ABSL_LTS_RELEASE_VERSION == 20220623,
              "written for Abseil 20220623 (Debian 12): review the interposed entry points");

namespace {

// Abseil's definition of `mangled`, the one after ours; aborts, naming it,
// when there is none (another Abseil than Debian 12's 20220623).
template <typename Fn>
Fn Next(const char* mangled) {
  void* next = dlsym(RTLD_NEXT, mangled);
  if (next == nullptr) {
    std::fprintf(stderr, "tsan absl_mutex_happens_before: no %s after ours: %s\n", mangled,
                 dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(next);
}

void* Readers(absl::Mutex* mu) { return reinterpret_cast<char*>(mu) + 1; }

void WriterLocked(absl::Mutex* mu) {
  __tsan_acquire(mu);
  __tsan_acquire(Readers(mu));
}
void ReaderLocked(absl::Mutex* mu) { __tsan_acquire(mu); }
void WriterUnlocking(absl::Mutex* mu) { __tsan_release(mu); }
void ReaderUnlocking(absl::Mutex* mu) { __tsan_release(Readers(mu)); }

}  // namespace

#define ATTN_ABSL_NEXT(type, mangled)                  \
  static const auto next = Next<type>(mangled)

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  ATTN_ABSL_NEXT(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  next(this);
  WriterLocked(this);
}

bool Mutex::TryLock() {
  ATTN_ABSL_NEXT(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = next(this);
  if (locked) WriterLocked(this);
  return locked;
}

void Mutex::Unlock() {
  ATTN_ABSL_NEXT(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  WriterUnlocking(this);
  next(this);
}

void Mutex::ReaderLock() {
  ATTN_ABSL_NEXT(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  next(this);
  ReaderLocked(this);
}

bool Mutex::ReaderTryLock() {
  ATTN_ABSL_NEXT(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  const bool locked = next(this);
  if (locked) ReaderLocked(this);
  return locked;
}

void Mutex::ReaderUnlock() {
  ATTN_ABSL_NEXT(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  ReaderUnlocking(this);
  next(this);
}

void Mutex::LockWhen(const Condition& cond) {
  ATTN_ABSL_NEXT(void (*)(Mutex*, const Condition&),
                 "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  next(this, cond);
  WriterLocked(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  ATTN_ABSL_NEXT(void (*)(Mutex*, const Condition&),
                 "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  next(this, cond);
  ReaderLocked(this);
}

// The *WithTimeout/*WithDeadline forms hold the lock on return whatever
// they return (false: the condition was still false at the deadline).
bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  ATTN_ABSL_NEXT(bool (*)(Mutex*, const Condition&, absl::Duration),
                 "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool met = next(this, cond, timeout);
  WriterLocked(this);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  ATTN_ABSL_NEXT(bool (*)(Mutex*, const Condition&, absl::Time),
                 "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const bool met = next(this, cond, deadline);
  WriterLocked(this);
  return met;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  ATTN_ABSL_NEXT(
      bool (*)(Mutex*, const Condition&, absl::Duration),
      "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool met = next(this, cond, timeout);
  ReaderLocked(this);
  return met;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  ATTN_ABSL_NEXT(
      bool (*)(Mutex*, const Condition&, absl::Time),
      "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const bool met = next(this, cond, deadline);
  ReaderLocked(this);
  return met;
}

// Await* and CondVar::Wait* are called with the lock held and unlock it while
// they wait. They are modelled as written (writer) locks: every gRPC use
// holds the lock written (gRPC takes no reader locks); a reader-held wait
// would be over-ordered (ordered after other readers), never under-ordered.
void Mutex::Await(const Condition& cond) {
  ATTN_ABSL_NEXT(void (*)(Mutex*, const Condition&),
                 "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  WriterUnlocking(this);
  next(this, cond);
  WriterLocked(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  ATTN_ABSL_NEXT(bool (*)(Mutex*, const Condition&, absl::Duration),
                 "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  WriterUnlocking(this);
  const bool met = next(this, cond, timeout);
  WriterLocked(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  ATTN_ABSL_NEXT(bool (*)(Mutex*, const Condition&, absl::Time),
                 "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  WriterUnlocking(this);
  const bool met = next(this, cond, deadline);
  WriterLocked(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  ATTN_ABSL_NEXT(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  WriterUnlocking(mu);
  next(this, mu);
  WriterLocked(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  ATTN_ABSL_NEXT(bool (*)(CondVar*, Mutex*, absl::Duration),
                 "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  WriterUnlocking(mu);
  const bool timed_out = next(this, mu, timeout);
  WriterLocked(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  ATTN_ABSL_NEXT(bool (*)(CondVar*, Mutex*, absl::Time),
                 "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  WriterUnlocking(mu);
  const bool timed_out = next(this, mu, deadline);
  WriterLocked(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
