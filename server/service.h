// AttentionService: the attnserve.v1.Attention gRPC service on the callback
// API (no thread per request). Handlers validate, enqueue into the model's
// batcher and return; the batch thread finishes the call. Thread-safe.
#ifndef ATTNSERVE_SERVER_SERVICE_H_
#define ATTNSERVE_SERVER_SERVICE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "attnserve/v1/attention.grpc.pb.h"
#include "server/clock.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace attnserve::server {

class AttentionService final : public v1::Attention::CallbackService {
 public:
  // `registry`, `metrics` and `clock` must outlive the service.
  AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                   int64_t max_message_bytes);

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const v1::AttendRequest* request,
                                   v1::AttendResponse* response) override;
  grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttendStream(
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

  // One request, unary or one message of a stream: validates, enqueues, and
  // calls `finish` exactly once (inline for a rejected request, from the
  // batch thread otherwise) after filling `response` on success. Both
  // `request` and `response` must stay valid until then.
  using FinishFn = std::function<void(const grpc::Status&)>;
  void Handle(grpc::CallbackServerContext* context, const v1::AttendRequest* request,
              v1::AttendResponse* response, FinishFn finish);

 private:
  // Metrics and logs of a finished request.
  void Finished(const std::string& model, const std::string& request_id, uint32_t length,
                const grpc::Status& status, int64_t received_us, const BatchStats& stats);
  // The request's reply has been handed to gRPC: it no longer counts as in flight.
  void Release();
  std::string NewRequestId();
  int64_t DeadlineMicros(const grpc::CallbackServerContext* context) const;

  // Constant after construction.
  ModelRegistry* const registry_;
  Metrics* const metrics_;
  Clock* const clock_;
  const int64_t max_message_bytes_;
  const std::string id_prefix_;  // random per process, so ids are unique across restarts

  std::atomic<bool> draining_{false};
  std::atomic<int64_t> last_refusal_us_{0};
  std::atomic<uint64_t> next_id_{1};
  RateLimiter reject_log_limiter_{10};

  std::mutex mu_;
  std::condition_variable idle_cv_;
  int64_t inflight_ = 0;  // guarded by mu_: accepted, not yet finished
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SERVICE_H_
