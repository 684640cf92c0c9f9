// InferenceService: the Open Inference Protocol (KServe v2,
// inference.GRPCInferenceService) on the callback API, beside attnserve.v1 on
// the same port: the same model registry, batchers and metrics. The mapping
// of attention onto v2 tensors is v2_request.h's. Thread-safe.
//
// Contract at the gRPC edge:
// - ModelInfer takes the raw request bytes and parses them here (bytes that
//   are not a ModelInferRequest: INVALID_ARGUMENT); raw FP32 input is
//   computed in place, and the engine writes `output` straight into the
//   reply's raw_output_contents.
// - A [B, L, d] input is B sequences submitted to the model's batcher one by
//   one; the reply is assembled in order once all are answered. If one fails
//   (queue full, deadline, engine error) the call fails with that status and
//   the sequences still queued are dropped, never computed.
// - Errors: unknown model or version NOT_FOUND; draining UNAVAILABLE; the
//   rest as attnserve.v1 (docs/DESIGN.md's table), messages naming the
//   tensor or parameter. Every accepted call is answered exactly once.
// - Metrics: ModelInfer counts in attnserve_requests_total{model,code} and
//   attnserve_request_duration_seconds{model} like one Attend (B sequences
//   are one request); every v2 call counts in
//   attnserve_v2_requests_total{method,code}.
// - ServerLive is always true; ServerReady and ModelReady turn false when
//   draining starts; ModelReady is true for a served model and version
//   (unknown ones: false, with OK, as a probe expects).
#ifndef ATTNSERVE_SERVER_V2_SERVICE_H_
#define ATTNSERVE_SERVER_V2_SERVICE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/support/byte_buffer.h>

#include "absl/base/thread_annotations.h"
#include "inference/v2/open_inference.grpc.pb.h"
#include "server/clock.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace prometheus {
class Counter;
template <typename T>
class Family;
}  // namespace prometheus

namespace attnserve::server {

struct InferenceServiceOptions {
  // Largest request or reply message, bytes (--max-message-bytes).
  int64_t max_message_bytes = int64_t{64} << 20;
};

namespace v2_internal {
using Base = inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<
    inference::GRPCInferenceService::WithCallbackMethod_ServerLive<
        inference::GRPCInferenceService::WithCallbackMethod_ServerReady<
            inference::GRPCInferenceService::WithCallbackMethod_ModelReady<
                inference::GRPCInferenceService::WithCallbackMethod_ServerMetadata<
                    inference::GRPCInferenceService::WithCallbackMethod_ModelMetadata<
                        inference::GRPCInferenceService::Service>>>>>>;
}  // namespace v2_internal

class InferenceService final : public v2_internal::Base {
 public:
  // `registry`, `metrics` and `clock` must outlive the service.
  InferenceService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                   const InferenceServiceOptions& options);
  ~InferenceService() override;

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

  // From now on new calls get UNAVAILABLE and readiness is false; accepted
  // calls go on. Returns once every accepted call has submitted all its
  // sequences (never long: Submit does not block), so stopping the batchers
  // after it cannot refuse part of an accepted [B, L, d] call.
  void StartDraining();
  // Clock time of the last call refused because of draining (0: none).
  int64_t last_refusal_us() const;
  // Blocks until every accepted ModelInfer is answered and its reply
  // delivered (Finish until OnDone), or until clock time `deadline_us`
  // passes; true when all are.
  bool WaitIdle(int64_t deadline_us);

 private:
  class InferCall;
  struct InferWork;

  // Answers a metadata or health call and counts it.
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const char* method,
                                 const grpc::Status& status);
  // Parses, validates and submits one ModelInfer; `finish` is called exactly
  // once (inline when refused, else from a batch thread).
  void Infer(const grpc::ByteBuffer& bytes, int64_t deadline_us,
             std::shared_ptr<const std::atomic<bool>> cancelled,
             std::function<void(const grpc::Status&, grpc::ByteBuffer)> finish);
  // One sequence of `work` answered; the last one answers the call.
  void SequenceDone(const std::shared_ptr<InferWork>& work, uint32_t index,
                    absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats);
  void Answer(InferWork& work, grpc::Status status);
  // Metrics and logs of an answered ModelInfer; never throws.
  void RecordInfer(const std::string& model, const std::string& id, const grpc::Status& status,
                   int64_t received_us, const BatchStats& stats);
  void CountCall(const char* method, const grpc::Status& status);
  int64_t DeadlineMicros(const grpc::CallbackServerContext* context) const;
  void BeginRequest();
  void EndRequest();
  // A reply handed to gRPC (Finish) until its call is done (OnDone).
  void HoldUnsent();
  void ReleaseUnsent();

  // Constant after construction.
  ModelRegistry* const registry_;
  Metrics* const metrics_;
  Clock* const clock_;
  const InferenceServiceOptions options_;
  prometheus::Family<prometheus::Counter>* calls_ = nullptr;  // attnserve_v2_requests_total

  std::atomic<bool> draining_{false};
  std::atomic<int64_t> last_refusal_us_{0};
  static constexpr uint32_t kFailureLogsPerSecond = 10;
  RateLimiter failure_log_limiter_{kFailureLogsPerSecond};

  std::mutex mu_;
  std::condition_variable idle_cv_;  // inflight_, unsent_ or submitting_ reached 0
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;  // accepted ModelInfer calls, not yet answered
  int64_t unsent_ ABSL_GUARDED_BY(mu_) = 0;    // answered, reply not yet delivered
  // Accepted calls still submitting their sequences to the batcher.
  int64_t submitting_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_V2_SERVICE_H_
