// Orderings that gRPC guarantees and ThreadSanitizer cannot see, stated where
// our code relies on them. No-ops except in -fsanitize=thread builds.
//
// gRPC's callback API runs a reactor's OnCancel before its OnDone (OnDone is
// the last reaction), but the countdown that orders them runs inside
// Debian's uninstrumented libgrpc++ when OnCancel comes from the executor, so
// TSan saw OnDone (deleting the reactor) racing with OnCancel's last access.
// A reactor marks the end of OnCancel with ATTN_HAPPENS_BEFORE(this) and the
// start of OnDone with ATTN_HAPPENS_AFTER(this). See also
// tests/tsan/grpc_happens_before.cc, which annotates gRPC's own ordering.
#ifndef ATTNSERVE_SERVER_HAPPENS_BEFORE_H_
#define ATTNSERVE_SERVER_HAPPENS_BEFORE_H_

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define ATTN_HAPPENS_BEFORE(address) __tsan_release(const_cast<void*>(static_cast<const void*>(address)))
#define ATTN_HAPPENS_AFTER(address) __tsan_acquire(const_cast<void*>(static_cast<const void*>(address)))
#else
#define ATTN_HAPPENS_BEFORE(address) static_cast<void>(address)
#define ATTN_HAPPENS_AFTER(address) static_cast<void>(address)
#endif

#endif  // ATTNSERVE_SERVER_HAPPENS_BEFORE_H_
