// gRPC's ordering, told to ThreadSanitizer (`make tsan` only).
//
// Debian's gRPC is not built with TSan. The inline code of <grpcpp/...>
// (call op sets, callback tags, reactor bindings) is compiled into our
// binaries and so instrumented, but the queues and mutexes that order it live
// in the uninstrumented libgrpc: TSan sees a CallOpSet filled on one thread
// and finalized on another with nothing between them, and reports a race
// (about 300 per e2e_stream_test run). ThreadSanitizer's answer for
// synchronization done in uninstrumented code is to annotate it with
// __tsan_release / __tsan_acquire; this file does that where gRPC promises an
// order, each edge keyed on the object the promise is about:
//
// 1. An operation started with a tag (grpc_call_start_batch,
//    grpc_server_request_call / _registered_call, grpc_server_shutdown_and_
//    notify, grpc_channel_watch_connectivity_state) and its completion
//    (grpc_cq_end_op) happen before the tag is returned by
//    grpc_completion_queue_next / _pluck / _thread_local_cache_flush.
// 2. A closure handed to grpc_core::Executor::Run happens before it runs.
// 3. A callback call's OnCancel and OnDone run after the countdowns that
//    gate them (ServerCallbackCall::CallOnCancel / ScheduleOnDone).
// 4. grpc::Server::Wait returns after every request of that server has
//    ended (Server::UnrefWithPossibleNotify, which libgrpc++ calls when a
//    callback call's OnDone and a synchronous handler have returned).
// 5. An auth metadata processor's registration happens before each call of
//    its `process`, and every `process` before its `destroy`.
//
// Each function named is interposed: defined here, so that every caller
// through the PLT (libgrpc and libgrpc++ as well as the inline grpcpp code
// in our binaries) reaches this definition, which annotates and forwards to
// libgrpc's. The C++ ones are defined under their mangled names (asm labels)
// as free functions taking `this` first, the Itanium ABI of a member
// function, rather than by redeclaring gRPC's classes. No edge joins two
// different objects, so a race between our own threads, or between our code
// and gRPC work it is not ordered with, is still reported; a completion TSan
// does not see (e.g. a GRPC_CQ_CALLBACK queue's functors, which libgrpc runs
// itself; Debian's epoll1 build polls callback queues through libgrpc++'s
// "alternative" next queue instead) lacks its acquire, which can only add
// reports, never hide one.
//
// Linked into every executable of a -DATTN_SANITIZE=thread build (see
// CMakeLists.txt); absent from every other build. Written against Debian 12's
// gRPC 1.51 (core 29.0.0), whose internal symbols and layouts it names: any
// other version aborts at the first use with a message.
#include <dlfcn.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <sanitizer/tsan_interface.h>

#include "absl/status/status.h"

namespace {

// The definition of `name` after ours: libgrpc's. Aborts, naming it, when
// there is none or gRPC is another version than the one this was written for.
void* NextSymbol(const char* name) {
  static const bool checked = [] {
    const char* version = grpc_version_string();
    if (std::string_view(version) != "29.0.0") {
      std::fprintf(stderr,
                   "tsan grpc_happens_before: written for gRPC core 29.0.0 (1.51), this is "
                   "%s: review tests/tsan/grpc_happens_before.cc\n",
                   version);
      std::abort();
    }
    return true;
  }();
  (void)checked;
  void* next = dlsym(RTLD_NEXT, name);
  if (next == nullptr) {
    std::fprintf(stderr, "tsan grpc_happens_before: no %s after ours: %s\n", name,
                 dlerror());
    std::abort();
  }
  return next;
}

// libgrpc's C function `fn`, looked up once per call site.
#define ATTN_NEXT(fn)                                                          \
  ([] {                                                                        \
    static const auto next = reinterpret_cast<decltype(&fn)>(NextSymbol(#fn)); \
    return next;                                                               \
  }())

// libgrpc's or libgrpc++'s C++ function `mangled`, of type `Fn`.
#define ATTN_NEXT_MANGLED(Fn, mangled) \
  static const auto next = reinterpret_cast<Fn>(NextSymbol(mangled))

void Release(void* object) {
  if (object != nullptr) __tsan_release(object);
}

void Acquire(void* object) {
  if (object != nullptr) __tsan_acquire(object);
}

grpc_event Delivered(grpc_event event) {
  if (event.type == GRPC_OP_COMPLETE) Acquire(event.tag);
  return event;
}

void* At(void* object, size_t offset) { return static_cast<char*>(object) + offset; }

}  // namespace

// ---- 1. Tags: start, completion, delivery. ----

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops,
                                      void* tag, void* reserved) {
  Release(tag);
  return ATTN_NEXT(grpc_call_start_batch)(call, ops, nops, tag, reserved);
}

grpc_call_error grpc_server_request_call(grpc_server* server, grpc_call** call,
                                         grpc_call_details* details,
                                         grpc_metadata_array* request_metadata,
                                         grpc_completion_queue* cq_bound_to_call,
                                         grpc_completion_queue* cq_for_notification,
                                         void* tag) {
  Release(tag);
  return ATTN_NEXT(grpc_server_request_call)(server, call, details, request_metadata,
                                             cq_bound_to_call, cq_for_notification, tag);
}

grpc_call_error grpc_server_request_registered_call(
    grpc_server* server, void* registered_method, grpc_call** call, gpr_timespec* deadline,
    grpc_metadata_array* request_metadata, grpc_byte_buffer** optional_payload,
    grpc_completion_queue* cq_bound_to_call, grpc_completion_queue* cq_for_notification,
    void* tag) {
  Release(tag);
  return ATTN_NEXT(grpc_server_request_registered_call)(
      server, registered_method, call, deadline, request_metadata, optional_payload,
      cq_bound_to_call, cq_for_notification, tag);
}

void grpc_server_shutdown_and_notify(grpc_server* server, grpc_completion_queue* cq,
                                     void* tag) {
  Release(tag);
  ATTN_NEXT(grpc_server_shutdown_and_notify)(server, cq, tag);
}

void grpc_channel_watch_connectivity_state(grpc_channel* channel,
                                           grpc_connectivity_state last_observed_state,
                                           gpr_timespec deadline, grpc_completion_queue* cq,
                                           void* tag) {
  Release(tag);
  ATTN_NEXT(grpc_channel_watch_connectivity_state)(channel, last_observed_state, deadline,
                                                   cq, tag);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                      void* reserved) {
  return Delivered(ATTN_NEXT(grpc_completion_queue_next)(cq, deadline, reserved));
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag,
                                       gpr_timespec deadline, void* reserved) {
  return Delivered(ATTN_NEXT(grpc_completion_queue_pluck)(cq, tag, deadline, reserved));
}

int grpc_completion_queue_thread_local_cache_flush(grpc_completion_queue* cq, void** tag,
                                                   int* ok) {
  int flushed = ATTN_NEXT(grpc_completion_queue_thread_local_cache_flush)(cq, tag, ok);
  if (flushed != 0) Acquire(*tag);
  return flushed;
}

}  // extern "C"

// Completions are posted inside libgrpc by grpc_cq_end_op, an internal
// symbol that libgrpc itself calls through its PLT: the thread that completes
// an operation (and wrote its results, e.g. a received status message)
// releases on the tag too, so that the receiver also sees what was written
// after the operation started.
struct grpc_cq_completion;
using CqDoneFn = void (*)(void* done_arg, grpc_cq_completion* storage);
void CqEndOp(grpc_completion_queue* cq, void* tag, absl::Status error, CqDoneFn done,
             void* done_arg, grpc_cq_completion* storage, bool internal)
    __asm__("_Z14grpc_cq_end_opP21grpc_completion_queuePvN4absl7debian36StatusEPFvS1_P18"
            "grpc_cq_completionES1_S6_b");
void CqEndOp(grpc_completion_queue* cq, void* tag, absl::Status error, CqDoneFn done,
             void* done_arg, grpc_cq_completion* storage, bool internal) {
  ATTN_NEXT_MANGLED(void (*)(grpc_completion_queue*, void*, absl::Status, CqDoneFn, void*,
                             grpc_cq_completion*, bool),
                    "_Z14grpc_cq_end_opP21grpc_completion_queuePvN4absl7debian36StatusEPFvS1_"
                    "P18grpc_cq_completionES1_S6_b");
  Release(tag);
  next(cq, tag, std::move(error), done, done_arg, storage, internal);
}

// ---- 2. Executor closures. ----
//
// libgrpc++ schedules a callback call's OnDone and OnCancel through
// grpc_core::Executor::Run (ServerCallbackCall::ScheduleOnDone /
// CallOnCancel, ClientReactor::InternalScheduleOnDone); the closure then runs
// the reactor's inline, instrumented CallOnDone, which destroys the call's op
// sets on the executor thread. Executor::Run is an internal libgrpc symbol,
// called from libgrpc++ (and libgrpc) through the PLT; its closure is wrapped
// so that the executor thread acquires what the scheduling thread released.
// Only grpc_closure's cb and cb_arg are touched, the second and third
// pointer-sized fields (src/core/lib/iomgr/closure.h: next_data, cb, cb_arg,
// error_data, ...; libgrpc's Executor::RunClosures calls *(closure + 8) with
// *(closure + 16)).
struct grpc_closure;

namespace {

using ClosureFn = void (*)(void* arg, absl::Status error);

struct ClosureFields {  // the head of a grpc_closure
  void* next_data;
  ClosureFn cb;
  void* cb_arg;
};

struct WrappedClosure {
  grpc_closure* closure;
  ClosureFn cb;
  void* cb_arg;
};

// A grpc_closure is gRPC's memory, reused by libgrpc (a transport's write
// closure is scheduled again and again) and ordered by it: its fields are
// read and written uninstrumented, as libgrpc's own accesses are, so that
// TSan neither checks nor records them.
__attribute__((no_sanitize_thread, noinline)) ClosureFields Swap(grpc_closure* closure,
                                                                 ClosureFn cb, void* cb_arg) {
  auto* fields = reinterpret_cast<ClosureFields*>(closure);
  ClosureFields before = *fields;
  fields->cb = cb;
  fields->cb_arg = cb_arg;
  return before;
}

// Restores the closure (it may be scheduled again from inside its own
// callback) and frees the wrapper before running the callback.
void RunWrapped(void* arg, absl::Status error) {
  auto* wrapped = static_cast<WrappedClosure*>(arg);
  Acquire(wrapped);
  Swap(wrapped->closure, wrapped->cb, wrapped->cb_arg);
  const ClosureFn cb = wrapped->cb;
  void* const cb_arg = wrapped->cb_arg;
  delete wrapped;
  cb(cb_arg, std::move(error));
}

}  // namespace

void ExecutorRun(grpc_closure* closure, absl::Status error, int executor_type, int job_type)
    __asm__("_ZN9grpc_core8Executor3RunEP12grpc_closureN4absl7debian36StatusENS_"
            "12ExecutorTypeENS_15ExecutorJobTypeE");
void ExecutorRun(grpc_closure* closure, absl::Status error, int executor_type, int job_type) {
  ATTN_NEXT_MANGLED(void (*)(grpc_closure*, absl::Status, int, int),
                    "_ZN9grpc_core8Executor3RunEP12grpc_closureN4absl7debian36StatusENS_"
                    "12ExecutorTypeENS_15ExecutorJobTypeE");
  if (closure != nullptr) {
    auto* wrapped = new WrappedClosure{closure, nullptr, nullptr};
    const ClosureFields before = Swap(closure, &RunWrapped, wrapped);
    wrapped->cb = before.cb;
    wrapped->cb_arg = before.cb_arg;
    Release(wrapped);
  }
  next(closure, std::move(error), executor_type, job_type);
}

// ---- 3. OnCancel and OnDone countdowns. ----
//
// A callback call's OnCancel and OnDone run once two (cancellation) or three
// (done) conditions are met, counted down by atomics in
// grpc::internal::ServerCallbackCall (server_callback.h). Most countdowns run
// in our binary's inline copies, and TSan sees them; but the ServerContext's
// completion op in libgrpc++ counts down through its own uninstrumented copy
// of MaybeCallOnCancel()/MaybeDone(), so when it comes last the thread that
// goes on to call CallOnCancel / ScheduleOnDone has not visibly acquired what
// the handler's thread released on the counter (the reactor it built). Both
// are exported libgrpc++ functions, called through the PLT: each first
// acquires its counter, then runs libgrpc++'s. The counters' offsets are
// those of gRPC 1.51's class (a vtable pointer, then the two atomic ints;
// sizeof(ServerCallbackCall) == 16).
namespace {
constexpr size_t kOnCancelConditionsOffset = 8;
constexpr size_t kCallbacksOutstandingOffset = 12;
}  // namespace

void ScheduleOnDone(void* call, bool inline_ondone)
    __asm__("_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
void ScheduleOnDone(void* call, bool inline_ondone) {
  ATTN_NEXT_MANGLED(void (*)(void*, bool),
                    "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  Acquire(At(call, kCallbacksOutstandingOffset));
  next(call, inline_ondone);
}

void CallOnCancel(void* call, void* reactor)
    __asm__("_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE");
void CallOnCancel(void* call, void* reactor) {
  ATTN_NEXT_MANGLED(void (*)(void*, void*),
                    "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE");
  Acquire(At(call, kOnCancelConditionsOffset));
  next(call, reactor);
}

// ---- 4. Server::Wait. ----
//
// libgrpc++ counts a server's outstanding requests (shutdown_refs_outstanding_)
// and Server::Wait returns once shutdown has brought them to zero. Each drop
// (UnrefWithPossibleNotify: a callback request's call_requester after OnDone,
// a synchronous request's destructor) releases on the server; Wait acquires
// it, so the owner may destroy its services after Wait. Both are exported
// libgrpc++ functions: UnrefWithPossibleNotify is called through the PLT from
// inside libgrpc++, Wait from our code.
void ServerUnrefWithPossibleNotify(void* server)
    __asm__("_ZN4grpc6Server23UnrefWithPossibleNotifyEv");
void ServerUnrefWithPossibleNotify(void* server) {
  ATTN_NEXT_MANGLED(void (*)(void*), "_ZN4grpc6Server23UnrefWithPossibleNotifyEv");
  Release(server);
  next(server);
}

void ServerWait(void* server) __asm__("_ZN4grpc6Server4WaitEv");
void ServerWait(void* server) {
  ATTN_NEXT_MANGLED(void (*)(void*), "_ZN4grpc6Server4WaitEv");
  next(server);
  Acquire(server);
}

// ---- 5. The auth metadata processor. ----
//
// server/transport_security.cc sets it up on the starting thread; libgrpc
// calls `process` on its own threads, concurrently for different calls, and
// `destroy` once after the last. Registration releases on `registered`,
// which every `process` acquires (and nothing else: two processes stay
// unordered); every `process` releases on `processed`, which `destroy`
// acquires.
namespace {

struct WrappedProcessor {
  grpc_auth_metadata_processor inner;
  char registered = 0;
  char processed = 0;
};

void ProcessWrapped(void* state, grpc_auth_context* context, const grpc_metadata* md,
                    size_t num_md, grpc_process_auth_metadata_done_cb cb, void* user_data) {
  auto* wrapped = static_cast<WrappedProcessor*>(state);
  Acquire(&wrapped->registered);
  wrapped->inner.process(wrapped->inner.state, context, md, num_md, cb, user_data);
  Release(&wrapped->processed);
}

void DestroyWrapped(void* state) {
  auto* wrapped = static_cast<WrappedProcessor*>(state);
  Acquire(&wrapped->registered);
  Acquire(&wrapped->processed);
  // As libgrpc does: no destroy for a processor without state.
  if (wrapped->inner.destroy != nullptr && wrapped->inner.state != nullptr) {
    wrapped->inner.destroy(wrapped->inner.state);
  }
  delete wrapped;
}

}  // namespace

extern "C" void grpc_server_credentials_set_auth_metadata_processor(
    grpc_server_credentials* creds, grpc_auth_metadata_processor processor) {
  if (processor.process == nullptr) {
    ATTN_NEXT(grpc_server_credentials_set_auth_metadata_processor)(creds, processor);
    return;
  }
  auto* wrapped = new WrappedProcessor{processor};
  Release(&wrapped->registered);
  ATTN_NEXT(grpc_server_credentials_set_auth_metadata_processor)(
      creds, {&ProcessWrapped, &DestroyWrapped, wrapped});
}
