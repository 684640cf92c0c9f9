// AttentionService: the attnserve.v1.Attention gRPC service on the callback
// API (no thread per request). Handlers parse, validate, enqueue into the
// model's batcher and return; the batch thread answers the call. Thread-safe.
//
// Contract at the gRPC edge:
// - Attend and AttendStream take the raw request bytes and parse them here, so
//   bytes that are not an AttendRequest get INVALID_ARGUMENT ("request could
//   not be parsed as attnserve.v1.AttendRequest ...") instead of gRPC's
//   UNIMPLEMENTED, counted under model "_unknown". The wire API and server
//   reflection are unchanged (the descriptors come from attention.proto).
// - Every request is answered exactly once: accepting it or building its
//   reply cannot throw past the service (out of memory: RESOURCE_EXHAUSTED,
//   any other exception: INTERNAL, each with a message). A request refused by
//   a batcher's budgets never allocates its reply.
// - A stream holds at most `stream_window` of its messages at once (read and
//   not yet answered, or answered and waiting to be written), and reads no
//   further message while those hold `stream_window_bytes` or more (request,
//   output and attention weights while computing; the serialized reply while
//   waiting); reading resumes as replies are written. A message is never
//   refused for its size, so one over the byte bound is read when the stream
//   holds less; at most one message and its reply overshoot the bound. The
//   first failed message stops reading; the stream ends with its status once
//   every message accepted before it has been answered. Nothing touches a
//   call after it finished.
// - Drain: WaitIdle counts a reply as answered only when it has been
//   delivered (a stream's write completed, a call's status sent), so replies
//   waiting on a slow reader's flow control hold the drain until its deadline.
#ifndef ATTNSERVE_SERVER_SERVICE_H_
#define ATTNSERVE_SERVER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <grpcpp/support/byte_buffer.h>

#include "absl/base/thread_annotations.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "server/clock.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/sessions.h"

namespace attnserve::server {

struct ServiceOptions {
  // Largest request or reply message, bytes (--max-message-bytes).
  int64_t max_message_bytes = int64_t{64} << 20;
  // Most messages of one AttendStream held at once (--stream-window). >= 1.
  uint32_t stream_window = 8;
  // Bytes of one AttendStream's held messages and replies at which reading
  // pauses (--stream-window-bytes). >= 1.
  uint64_t stream_window_bytes = uint64_t{64} << 20;
  // Streaming sessions' limits (--max-sessions, --session-cache-bytes,
  // --session-idle-timeout-s).
  SessionOptions sessions;
  // The clock of sessions' idle times; null = the service's. Not a flag:
  // tests end idle sessions on a FakeClock while everything else runs on
  // real time.
  Clock* session_clock = nullptr;
};

// Test seams; each optional.
struct ServiceHooks {
  // Called on the batch thread before a computed reply is built; tests throw
  // from it to check that a failing reply still answers the call.
  std::function<void(const v1::AttendRequest&)> before_reply;
  // Called on the handler's thread once a request is parsed and valid,
  // before it is queued; tests throw from it to check that a request failing
  // while being accepted is still answered.
  std::function<void(const v1::AttendRequest&)> before_submit;
};

class AttentionService final
    : public v1::Attention::WithRawCallbackMethod_Attend<
          v1::Attention::WithRawCallbackMethod_AttendStream<
              v1::Attention::WithRawCallbackMethod_Session<
                  v1::Attention::WithCallbackMethod_ListModels<v1::Attention::Service>>>> {
 public:
  // `registry`, `metrics` and `clock` must outlive the service.
  AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                   const ServiceOptions& options, ServiceHooks hooks = {});

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttendStream(
      grpc::CallbackServerContext* context) override;
  // A streaming session (session_call.cc): the first message opens it, each
  // later one appends a chunk answered with its rows.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  // From now on new requests fail with UNAVAILABLE; accepted ones go on.
  // Open sessions answer the chunks they received, then end (UNAVAILABLE).
  void StartDraining();

  // The open sessions and their limits.
  const SessionTable& sessions() const { return *sessions_; }

  // Clock time of the last request refused because of draining (0: none).
  int64_t last_refusal_us() const;

  // Blocks until every accepted request has been answered and every reply
  // and call status handed to gRPC has been delivered (or its call ended), or
  // until clock time `deadline_us`; returns true in the first case.
  bool WaitIdle(int64_t deadline_us);

 private:
  class UnaryCall;
  class StreamCall;
  class SessionCall;

  // What the batch thread needs of the call a request came on. Shared with
  // the call's reactor, so it outlives the call (never the raw context).
  struct CallInfo {
    int64_t deadline_us = 0;  // clock time; max() = none
    std::shared_ptr<const std::atomic<bool>> cancelled;  // set by the reactor's OnCancel
    // Optional (streams): called by Handle, before the request is queued,
    // with the bytes it will hold until answered (the message, its output
    // and attention weights); given back as Reply::admitted_bytes. Must not
    // throw.
    std::function<void(uint64_t bytes)> on_admitted;
  };
  // The answer to one request: `bytes` is the serialized AttendResponse when
  // `status` is OK. `request_id` is empty when the bytes did not parse; it
  // is valid during the ReplyFn call only. The ReplyFn may take `status` and
  // `bytes` (move, Swap).
  struct Reply {
    grpc::Status status;
    grpc::ByteBuffer bytes;
    std::string_view request_id;
    uint64_t admitted_bytes = 0;  // what on_admitted was given; 0 if not called
  };
  // Called exactly once per request (inline for a refused request, from the
  // batch thread otherwise). Must not throw.
  using ReplyFn = std::function<void(Reply&)>;
  struct Work;  // a request and its reply, alive until answered

  // One request, unary or one message of a stream: parses `bytes`,
  // validates, enqueues; `reply` is called exactly once. Never throws.
  void Handle(const grpc::ByteBuffer& bytes, const CallInfo& call, ReplyFn reply);
  // Handle's work; when it throws, the request is neither answered nor
  // queued (Handle then answers it).
  void Admit(const grpc::ByteBuffer& bytes, const CallInfo& call,
             const std::shared_ptr<Work>& work);
  // NOT_FOUND naming the served models.
  grpc::Status ModelNotFound(const std::string& name) const;
  // Answers a request refused before it reached a batcher; never throws.
  void Refuse(grpc::Status status, Work& work);
  // The batch thread's answer to a queued request; never throws.
  void Complete(Work& work, absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats);
  // Calls work.reply, then EndRequest; never throws.
  void Deliver(Work& work, grpc::Status status, grpc::ByteBuffer* bytes);
  // Serializes a computed reply around the engine's buffers (their floats
  // move into *bytes, server/reply.h); never throws.
  grpc::Status BuildReply(core::SequenceOutput& out, const BatchStats& stats, Work* work,
                          grpc::ByteBuffer* bytes);
  // Metrics and logs of an answered request; never throws.
  void RecordOutcome(const std::string& model, const std::string& request_id, uint32_t length,
                     const grpc::Status& status, int64_t received_us, const BatchStats& stats);
  // In-flight accounting: every Handle is one BeginRequest, one EndRequest.
  void BeginRequest();
  void EndRequest();
  // Delivery accounting: a reactor holds one per reply or status it hands to
  // gRPC (before the hand-off, so it never misses one) and releases it when
  // the write completes or the call ends.
  void HoldUnsent(int64_t n);
  void ReleaseUnsent(int64_t n);
  std::string NewRequestId();
  int64_t DeadlineMicros(const grpc::CallbackServerContext* context) const;

  // Constant after construction.
  ModelRegistry* const registry_;
  Metrics* const metrics_;
  Clock* const clock_;
  const ServiceOptions options_;
  const ServiceHooks hooks_;
  const std::string id_prefix_;  // random per process, so ids are unique across restarts
  const std::unique_ptr<SessionTable> sessions_;

  std::atomic<bool> draining_{false};
  std::atomic<int64_t> last_refusal_us_{0};
  std::atomic<uint64_t> next_id_{1};
  static constexpr uint32_t kFailureLogsPerSecond = 10;
  RateLimiter failure_log_limiter_;

  std::mutex mu_;
  std::condition_variable idle_cv_;          // inflight_ or unsent_ reached 0
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;  // accepted, not yet answered
  int64_t unsent_ ABSL_GUARDED_BY(mu_) = 0;    // handed to gRPC, not yet delivered
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SERVICE_H_
