// gRPC's completion ordering, told to ThreadSanitizer (`make tsan` only).
//
// Debian's gRPC is not built with TSan. The inline code of <grpcpp/...>
// (call op sets, callback tags, reactor bindings) is compiled into our
// binaries and so instrumented, but the queues and mutexes that order it live
// in the uninstrumented libgrpc: TSan sees a CallOpSet filled on one thread
// and finalized on another with nothing between them, and reports a race
// (about 300 per e2e_stream_test run). ThreadSanitizer's answer for
// synchronization done in uninstrumented code is to annotate it with
// __tsan_release / __tsan_acquire; this file does that at the one boundary
// where gRPC documents the ordering:
//
//   every operation started with a tag (grpc_call_start_batch,
//   grpc_server_request_call, grpc_server_request_registered_call,
//   grpc_server_shutdown_and_notify, grpc_channel_watch_connectivity_state)
//   happens before that tag's completion is returned by
//   grpc_completion_queue_next / _pluck / _thread_local_cache_flush.
//
// Each of those C functions is interposed (our definition in the executable
// wins over libgrpc's for every caller through the PLT, libgrpc++ and the
// inline grpcpp code alike) and forwards to libgrpc's. The starter releases
// on the tag's address; whoever receives the completion acquires it. That is
// the whole model: no edge between different tags, no "gRPC is one lock".
// So it can only hide a race whose two accesses really are ordered by an
// operation and its completion; races between our own threads (the batcher,
// reactors, clients), and between our code and a completion it is not ordered
// with, are still reported. A completion TSan does not see (for example a
// GRPC_CQ_CALLBACK queue, whose functors libgrpc runs itself; Debian's
// epoll1 build polls callback queues through libgrpc++'s "alternative" next
// queue instead) lacks its acquire, which can only add reports, never hide
// one.
//
// Linked into every executable of a -DATTN_SANITIZE=thread build (see
// CMakeLists.txt); absent from every other build.
#include <dlfcn.h>

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
// there is none (another gRPC than the one this file was written for).
void* NextSymbol(const char* name) {
  // Written against Debian 12's gRPC 1.51 (core 29.0.0): the internal
  // symbols and the layouts below are that version's.
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

// libgrpc's `fn`, looked up once per call site.
#define ATTN_NEXT(fn)                                                       \
  ([] {                                                                     \
    static const auto next = reinterpret_cast<decltype(&fn)>(NextSymbol(#fn)); \
    return next;                                                            \
  }())

// Released by every thread that returns from gRPC work (a CQ waiter that
// comes back for its next event, an executor closure that returned);
// acquired when grpc::Server::Wait returns. See "Shutdown" below.
char g_quiesced;

void Quiesced() { __tsan_release(&g_quiesced); }

void Started(void* tag) {
  if (tag != nullptr) __tsan_release(tag);
}

void Completed(void* tag) {
  if (tag != nullptr) __tsan_acquire(tag);
}

grpc_event Delivered(grpc_event event) {
  if (event.type == GRPC_OP_COMPLETE) Completed(event.tag);
  return event;
}

}  // namespace

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops,
                                      void* tag, void* reserved) {
  Started(tag);
  return ATTN_NEXT(grpc_call_start_batch)(call, ops, nops, tag, reserved);
}

grpc_call_error grpc_server_request_call(grpc_server* server, grpc_call** call,
                                         grpc_call_details* details,
                                         grpc_metadata_array* request_metadata,
                                         grpc_completion_queue* cq_bound_to_call,
                                         grpc_completion_queue* cq_for_notification,
                                         void* tag) {
  Started(tag);
  return ATTN_NEXT(grpc_server_request_call)(server, call, details, request_metadata,
                                             cq_bound_to_call, cq_for_notification, tag);
}

grpc_call_error grpc_server_request_registered_call(
    grpc_server* server, void* registered_method, grpc_call** call, gpr_timespec* deadline,
    grpc_metadata_array* request_metadata, grpc_byte_buffer** optional_payload,
    grpc_completion_queue* cq_bound_to_call, grpc_completion_queue* cq_for_notification,
    void* tag) {
  Started(tag);
  return ATTN_NEXT(grpc_server_request_registered_call)(
      server, registered_method, call, deadline, request_metadata, optional_payload,
      cq_bound_to_call, cq_for_notification, tag);
}

void grpc_server_shutdown_and_notify(grpc_server* server, grpc_completion_queue* cq,
                                     void* tag) {
  Started(tag);
  ATTN_NEXT(grpc_server_shutdown_and_notify)(server, cq, tag);
}

void grpc_channel_watch_connectivity_state(grpc_channel* channel,
                                           grpc_connectivity_state last_observed_state,
                                           gpr_timespec deadline, grpc_completion_queue* cq,
                                           void* tag) {
  Started(tag);
  ATTN_NEXT(grpc_channel_watch_connectivity_state)(channel, last_observed_state, deadline,
                                                   cq, tag);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                      void* reserved) {
  Quiesced();
  return Delivered(ATTN_NEXT(grpc_completion_queue_next)(cq, deadline, reserved));
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag,
                                       gpr_timespec deadline, void* reserved) {
  Quiesced();
  return Delivered(ATTN_NEXT(grpc_completion_queue_pluck)(cq, tag, deadline, reserved));
}

int grpc_completion_queue_thread_local_cache_flush(grpc_completion_queue* cq, void** tag,
                                                   int* ok) {
  int flushed = ATTN_NEXT(grpc_completion_queue_thread_local_cache_flush)(cq, tag, ok);
  if (flushed != 0) Completed(*tag);
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
void grpc_cq_end_op(grpc_completion_queue* cq, void* tag, absl::Status error, CqDoneFn done,
                    void* done_arg, grpc_cq_completion* storage, bool internal) {
  using EndOpFn = void (*)(grpc_completion_queue*, void*, absl::Status, CqDoneFn, void*,
                           grpc_cq_completion*, bool);
  static const auto next = reinterpret_cast<EndOpFn>(NextSymbol(
      "_Z14grpc_cq_end_opP21grpc_completion_queuePvN4absl7debian36StatusEPFvS1_P18"
      "grpc_cq_completionES1_S6_b"));
  Started(tag);
  next(cq, tag, std::move(error), done, done_arg, storage, internal);
}

// The second ordering gRPC's C++ library relies on: a closure handed to
// grpc_core::Executor::Run happens before it runs on an executor thread.
// libgrpc++ schedules a callback call's OnDone and OnCancel this way
// (ServerCallbackCall::ScheduleOnDone / CallOnCancel, ClientReactor::
// InternalScheduleOnDone); the closure then runs the reactor's inline,
// instrumented CallOnDone, which destroys the call's op sets on the executor
// thread. Executor::Run is an internal libgrpc symbol, called from libgrpc++
// through the PLT; its closure is wrapped so that the executor thread acquires
// what the scheduling thread released. Only grpc_closure's cb and cb_arg are
// touched, the second and third pointer-sized fields in every gRPC release
// (src/core/lib/iomgr/closure.h: next_data, cb, cb_arg, error_data, ...).
struct grpc_closure;  // src/core/lib/iomgr/closure.h, not installed

namespace grpc_core {
enum class ExecutorType { kDefault = 0 };
enum class ExecutorJobType { kShort = 0 };
class Executor {
 public:
  static void Run(grpc_closure* closure, absl::Status error, ExecutorType executor_type,
                  ExecutorJobType job_type);
};
}  // namespace grpc_core

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

void RunWrapped(void* arg, absl::Status error) {
  auto* wrapped = static_cast<WrappedClosure*>(arg);
  Completed(wrapped);
  Swap(wrapped->closure, wrapped->cb, wrapped->cb_arg);  // as it was
  const ClosureFn cb = wrapped->cb;
  void* const cb_arg = wrapped->cb_arg;
  delete wrapped;
  cb(cb_arg, std::move(error));
  Quiesced();
}

}  // namespace

void grpc_core::Executor::Run(grpc_closure* closure, absl::Status error,
                              ExecutorType executor_type, ExecutorJobType job_type) {
  using RunFn = void (*)(grpc_closure*, absl::Status, ExecutorType, ExecutorJobType);
  static const auto next = reinterpret_cast<RunFn>(NextSymbol(
      "_ZN9grpc_core8Executor3RunEP12grpc_closureN4absl7debian36StatusENS_"
      "12ExecutorTypeENS_15ExecutorJobTypeE"));
  if (closure != nullptr) {
    auto* wrapped = new WrappedClosure{closure, nullptr, nullptr};
    const ClosureFields before = Swap(closure, &RunWrapped, wrapped);
    wrapped->cb = before.cb;
    wrapped->cb_arg = before.cb_arg;
    Started(wrapped);
  }
  next(closure, std::move(error), executor_type, job_type);
}

// Shutdown: grpc::Server::Wait returns once every call of the server has
// ended, its callbacks (OnDone included) and synchronous handlers have
// returned, and its threads are idle; the owner then destroys the services.
// libgrpc++ waits for that on absl::Mutex/CondVar, which TSan cannot see, so
// Wait acquires what every gRPC thread released when it last came back from
// gRPC work (Quiesced above). This edge is wider than gRPC's promise in one
// way: it also orders the work of threads of other servers and of clients in
// the process before Wait's return. It is taken only there.
namespace grpc {
class Server {
 public:
  void Wait();
};
}  // namespace grpc

void grpc::Server::Wait() {
  using WaitFn = void (*)(grpc::Server*);
  static const auto next = reinterpret_cast<WaitFn>(NextSymbol("_ZN4grpc6Server4WaitEv"));
  next(this);
  __tsan_acquire(&g_quiesced);
}

// An auth metadata processor (server/transport_security.cc) is set up on the
// starting thread and called by libgrpc on its own threads: the state it is
// given at registration happens before every call of `process`. The
// processor is wrapped so that each call acquires what registration
// released.
namespace {

struct WrappedProcessor {
  grpc_auth_metadata_processor inner;
};

void ProcessWrapped(void* state, grpc_auth_context* context, const grpc_metadata* md,
                    size_t num_md, grpc_process_auth_metadata_done_cb cb, void* user_data) {
  auto* wrapped = static_cast<WrappedProcessor*>(state);
  Completed(wrapped);
  wrapped->inner.process(wrapped->inner.state, context, md, num_md, cb, user_data);
  Started(wrapped);  // for destroy, which gRPC calls after the last process
}

void DestroyWrapped(void* state) {
  auto* wrapped = static_cast<WrappedProcessor*>(state);
  Completed(wrapped);
  if (wrapped->inner.destroy != nullptr) wrapped->inner.destroy(wrapped->inner.state);
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
  Started(wrapped);
  ATTN_NEXT(grpc_server_credentials_set_auth_metadata_processor)(
      creds, {&ProcessWrapped, &DestroyWrapped, wrapped});
}

// A callback call's OnCancel and OnDone run once two (cancellation) or three
// (done) conditions are met, counted down by atomics in
// grpc::internal::ServerCallbackCall (server_callback.h). Most countdowns run
// in our binary's inline copies, and TSan sees them; but the ServerContext's
// completion op in libgrpc++ counts down through its own uninstrumented copy
// of MaybeCallOnCancel()/MaybeDone(), so when it comes last the thread that
// goes on to call CallOnCancel / ScheduleOnDone has not visibly acquired what
// the handler's thread released on the counter (the reactor it built). Both
// are exported libgrpc++ functions, called through the PLT: here each first
// acquires its counter, then runs libgrpc++'s. The counters' offsets are
// those of gRPC 1.51's class (a vtable pointer, then the two atomic ints).
namespace grpc::internal {
class ServerReactor;
class ServerCallbackCall {
 public:
  void ScheduleOnDone(bool inline_ondone);
  void CallOnCancel(ServerReactor* reactor);
};
}  // namespace grpc::internal

namespace {
constexpr size_t kOnCancelConditionsOffset = 8;   // std::atomic_int, after the vptr
constexpr size_t kCallbacksOutstandingOffset = 12;  // std::atomic_int
void* At(void* object, size_t offset) { return static_cast<char*>(object) + offset; }
}  // namespace

void grpc::internal::ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  using Fn = void (*)(ServerCallbackCall*, bool);
  static const auto next = reinterpret_cast<Fn>(
      NextSymbol("_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb"));
  __tsan_acquire(At(this, kCallbacksOutstandingOffset));
  next(this, inline_ondone);
}

void grpc::internal::ServerCallbackCall::CallOnCancel(ServerReactor* reactor) {
  using Fn = void (*)(ServerCallbackCall*, ServerReactor*);
  static const auto next = reinterpret_cast<Fn>(NextSymbol(
      "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE"));
  __tsan_acquire(At(this, kOnCancelConditionsOffset));
  next(this, reactor);
}
