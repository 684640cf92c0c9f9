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
// - Every accepted request is answered exactly once: building the reply
//   cannot throw past the service (out of memory: RESOURCE_EXHAUSTED, any
//   other exception: INTERNAL, each with a message).
// - A stream holds at most `stream_window` of its messages at once (read and
//   not yet answered, or answered and waiting to be written); reading pauses
//   there and resumes as replies are written. The first failed message stops
//   reading; the stream ends with its status once every message accepted
//   before it has been answered. Nothing touches a call after it finished.
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

#include <grpcpp/support/byte_buffer.h>

#include "absl/base/thread_annotations.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "server/clock.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace attnserve::server {

struct ServiceOptions {
  // Largest request or reply message, bytes (--max-message-bytes).
  int64_t max_message_bytes = int64_t{64} << 20;
  // Most messages of one AttendStream held at once (--stream-window). >= 1.
  uint32_t stream_window = 8;
};

// Test seams; each optional.
struct ServiceHooks {
  // Called on the batch thread before a computed reply is built; tests throw
  // from it to check that a failing reply still answers the call.
  std::function<void(const v1::AttendRequest&)> before_reply;
};

class AttentionService final
    : public v1::Attention::WithRawCallbackMethod_Attend<
          v1::Attention::WithRawCallbackMethod_AttendStream<
              v1::Attention::WithCallbackMethod_ListModels<v1::Attention::Service>>> {
 public:
  // `registry`, `metrics` and `clock` must outlive the service.
  AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                   const ServiceOptions& options, ServiceHooks hooks = {});

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttendStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  // From now on new requests fail with UNAVAILABLE; accepted ones go on.
  void StartDraining();

  // Clock time of the last request refused because of draining (0: none).
  int64_t last_refusal_us() const;

  // Blocks until no accepted request is unanswered or `deadline` passes;
  // returns true when none is.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);

 private:
  class UnaryCall;
  class StreamCall;

  // What the batch thread needs of the call a request came on. Shared with
  // the call's reactor, so it outlives the call (never the raw context).
  struct CallInfo {
    int64_t deadline_us = 0;  // clock time; max() = none
    std::shared_ptr<const std::atomic<bool>> cancelled;  // set by the reactor's OnCancel
  };
  // The answer to one request: `bytes` is the serialized AttendResponse when
  // `status` is OK. `request_id` is empty when the bytes did not parse.
  struct Reply {
    grpc::Status status;
    grpc::ByteBuffer bytes;
    std::string request_id;
  };
  // Called exactly once per request (inline for a refused request, from the
  // batch thread otherwise). Must not throw.
  using ReplyFn = std::function<void(const Reply&)>;
  struct Work;  // a request and its reply, alive until answered

  // One request, unary or one message of a stream: parses `bytes`,
  // validates, enqueues; `reply` is called exactly once.
  void Handle(const grpc::ByteBuffer& bytes, const CallInfo& call, ReplyFn reply);
  // Answers a request refused before it reached a batcher.
  void Refuse(const grpc::Status& status, const std::string& model_label, const std::string& id,
              uint32_t length, int64_t received_us, const ReplyFn& reply);
  // Fills and serializes a computed reply; never throws.
  grpc::Status BuildReply(const core::SequenceOutput& out, const BatchStats& stats, Work* work,
                          grpc::ByteBuffer* bytes);
  // Metrics and logs of an answered request; never throws.
  void RecordOutcome(const std::string& model, const std::string& request_id, uint32_t length,
                     const grpc::Status& status, int64_t received_us, const BatchStats& stats);
  // In-flight accounting: every Handle is one BeginRequest, one EndRequest.
  void BeginRequest();
  void EndRequest();
  std::string NewRequestId();
  int64_t DeadlineMicros(const grpc::CallbackServerContext* context) const;

  // Constant after construction.
  ModelRegistry* const registry_;
  Metrics* const metrics_;
  Clock* const clock_;
  const ServiceOptions options_;
  const ServiceHooks hooks_;
  const std::string id_prefix_;  // random per process, so ids are unique across restarts

  std::atomic<bool> draining_{false};
  std::atomic<int64_t> last_refusal_us_{0};
  std::atomic<uint64_t> next_id_{1};
  static constexpr uint32_t kFailureLogsPerSecond = 10;
  RateLimiter failure_log_limiter_{kFailureLogsPerSecond};

  std::mutex mu_;
  std::condition_variable idle_cv_;          // inflight_ reached 0
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;  // accepted, not yet answered
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SERVICE_H_
