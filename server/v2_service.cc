#include "server/v2_service.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>


#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/happens_before.h"
#include "server/status_names.h"
#include "server/v2_request.h"
#include "server/validation.h"
#include "server/version.h"

namespace attnserve::server {
namespace {

// As in service.cc: client strings never become label values.
constexpr char kUnknownModelLabel[] = "_unknown";
// ModelMetadata's trailing metadata: the model's config as JSON.
constexpr char kConfigMetadataKey[] = "attnserve-model-config";

grpc::Status ParseInferRequest(const grpc::ByteBuffer& bytes,
                               inference::ModelInferRequest* request) {
  if (!ParseFromByteBuffer(bytes, request)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("request could not be parsed as inference.ModelInferRequest (",
                                     bytes.Length(), " bytes): not valid protobuf wire data"));
  }
  return grpc::Status::OK;
}

// A model's one version is its content version (ServedModel::version, as in
// attnserve.v1's ModelInfo.version); "" means the one being served.
bool KnownVersion(const std::string& version, const ServedModel& model) {
  return version.empty() || version == model.version();
}

void SetStat(inference::ModelInferResponse* response, const char* name, uint64_t value) {
  (*response->mutable_parameters())[name].set_int64_param(static_cast<int64_t>(value));
}

}  // namespace

// One ModelInfer call and everything its sequences need until the reply is
// sent: the request (whose raw bytes the engine reads), the reply (whose raw
// output the engine writes), and the answers gathered so far.
struct InferenceService::InferWork {
  inference::ModelInferRequest request;
  inference::ModelInferResponse response;
  v2::InferPlan plan;
  std::vector<float> scratch;  // `output` when it is not part of the reply
  bool output_from_scratch = false;  // `output` is requested but was laid in scratch
  std::string* attention = nullptr;  // the reply's attention entry, if requested
  std::string model = kUnknownModelLabel;
  int64_t received_us = 0;
  std::shared_ptr<const std::atomic<bool>> cancelled;
  std::function<void(const grpc::Status&, grpc::ByteBuffer)> finish;
  std::atomic<bool> failed{false};  // a sequence failed: drop the others

  std::mutex mu;
  uint32_t remaining ABSL_GUARDED_BY(mu) = 0;  // sequences not yet answered
  grpc::Status error ABSL_GUARDED_BY(mu);      // the first failure
  BatchStats stats ABSL_GUARDED_BY(mu);        // the largest of each over the sequences
};

// One ModelInfer call (as service.cc's UnaryCall): OnCancel raises the flag
// the batcher polls; the reply counts as undelivered from Finish until
// OnDone, which deletes the reactor.
class InferenceService::InferCall final : public grpc::ServerUnaryReactor {
 public:
  InferCall(InferenceService* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer* request, grpc::ByteBuffer* response)
      : service_(service), cancelled_(std::make_shared<std::atomic<bool>>(false)) {
    // After Finish this reactor may be gone: the callback touches nothing else.
    service->Infer(*request, service->DeadlineMicros(context), cancelled_,
                   [this, response](const grpc::Status& status, grpc::ByteBuffer bytes) {
                     if (status.ok()) *response = std::move(bytes);
                     service_->HoldUnsent();
                     Finish(status);
                   });
    // Parsed: free the request bytes now rather than when the call ends.
    const_cast<grpc::ByteBuffer*>(request)->Clear();
  }

  void OnCancel() override {
    cancelled_->store(true);
    ATTN_HAPPENS_BEFORE(this);  // OnDone comes after (happens_before.h)
  }
  void OnDone() override {
    ATTN_HAPPENS_AFTER(this);
    service_->ReleaseUnsent();
    delete this;
  }

 private:
  InferenceService* const service_;
  const std::shared_ptr<std::atomic<bool>> cancelled_;
};

InferenceService::InferenceService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                                   const InferenceServiceOptions& options)
    : registry_(registry), metrics_(metrics), clock_(clock), options_(options) {
  calls_ = &prometheus::BuildCounter()
                .Name("attnserve_v2_requests_total")
                .Help("Finished Open Inference Protocol (KServe v2) calls by method and gRPC "
                      "status code name")
                .Register(*metrics_->registry());
}

InferenceService::~InferenceService() = default;

int64_t InferenceService::DeadlineMicros(const grpc::CallbackServerContext* context) const {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::numeric_limits<int64_t>::max();
  }
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
      deadline - std::chrono::system_clock::now());
  return clock_->NowMicros() + left.count();
}

void InferenceService::CountCall(const char* method, const grpc::Status& status) {
  try {
    calls_->Add({{"method", method}, {"code", StatusCodeName(status.error_code())}}).Increment();
  } catch (...) {  // metrics must not keep a call from being answered
  }
}

grpc::ServerUnaryReactor* InferenceService::Done(grpc::CallbackServerContext* context,
                                                 const char* method, const grpc::Status& status) {
  CountCall(method, status);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::ServerLive(grpc::CallbackServerContext* context,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Done(context, "ServerLive", grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(grpc::CallbackServerContext* context,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* response) {
  response->set_ready(!draining_.load());
  return Done(context, "ServerReady", grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(grpc::CallbackServerContext* context,
                                                       const inference::ModelReadyRequest* request,
                                                       inference::ModelReadyResponse* response) {
  auto model = registry_->Find(request->name());
  response->set_ready(model != nullptr && KnownVersion(request->version(), *model) &&
                      !draining_.load());
  return Done(context, "ModelReady", grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("attnserve");
  response->set_version(Version());
  return Done(context, "ServerMetadata", grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* context, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto model = registry_->Find(request->name());
  if (model == nullptr || !KnownVersion(request->version(), *model)) {
    return Done(context, "ModelMetadata",
                grpc::Status(grpc::StatusCode::NOT_FOUND,
                             model == nullptr
                                 ? absl::StrCat("model '", v2::ClipForMessage(request->name()),
                                                "' is not served here")
                                 : absl::StrCat("model '", request->name(), "' has no version '",
                                                v2::ClipForMessage(request->version()),
                                                "'; versions: ",
                                                model->version())));
  }
  v2::FillModelMetadata(model->name(), model->version(), model->config(), response);
  context->AddTrailingMetadata(kConfigMetadataKey, v2::ConfigJson(model->config()));
  return Done(context, "ModelMetadata", grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return new InferCall(this, context, request, response);
}

void InferenceService::Infer(const grpc::ByteBuffer& bytes, int64_t deadline_us,
                             std::shared_ptr<const std::atomic<bool>> cancelled,
                             std::function<void(const grpc::Status&, grpc::ByteBuffer)> finish) {
  auto work = std::make_shared<InferWork>();
  work->received_us = clock_->NowMicros();
  work->cancelled = std::move(cancelled);
  work->finish = std::move(finish);
  BeginRequest();
  if (grpc::Status s = ParseInferRequest(bytes, &work->request); !s.ok()) return Answer(*work, s);
  const inference::ModelInferRequest& request = work->request;
  work->response.set_id(request.id());
  // Looked up once; held only by this function (never by the queued work).
  auto model = registry_->Find(request.model_name());
  if (model == nullptr) {
    std::vector<std::string> names;
    const auto models = registry_->models();  // a snapshot, held for the loop
    for (const auto& m : *models) names.push_back(m->name());
    return Answer(*work,
                  grpc::Status(grpc::StatusCode::NOT_FOUND,
                               absl::StrCat("model '", v2::ClipForMessage(request.model_name()),
                                            "' is not served here; served models: ",
                                            absl::StrJoin(names, ", "))));
  }
  work->model = model->name();
  if (!KnownVersion(request.model_version(), *model)) {
    return Answer(*work, grpc::Status(grpc::StatusCode::NOT_FOUND,
                                      absl::StrCat("model '", model->name(), "' has no version '",
                                                   v2::ClipForMessage(request.model_version()),
                                                   "'; versions: ", model->version())));
  }
  // Accepted or refused under mu_: an accepted call submits all its
  // sequences before StartDraining returns and the batchers stop taking any.
  bool refused = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    refused = draining_.load();
    if (!refused) ++submitting_;
  }
  if (refused) {
    last_refusal_us_.store(clock_->NowMicros());
    return Answer(*work, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                      "server is draining for shutdown; retry on another replica"));
  }
  struct Submitting {
    InferenceService* service;
    ~Submitting() {
      std::lock_guard<std::mutex> lock(service->mu_);
      if (--service->submitting_ == 0) service->idle_cv_.notify_all();
    }
  } submitting{this};
  work->response.set_model_name(model->name());
  work->response.set_model_version(model->version());
  if (grpc::Status s = v2::PlanInfer(request, model->name(), model->config(),
                                     options_.max_message_bytes, &work->plan);
      !s.ok()) {
    return Answer(*work, s);
  }
  if (!work->plan.decoded.empty()) {
    // The sequences read the decoded copy, and the edges were copied: free
    // the raw bytes now (the batcher charges only what the sequences hold).
    for (std::string& raw : *work->request.mutable_raw_input_contents()) std::string().swap(raw);
  }
  try {
    work->attention =
        v2::LayOutResponse(model->config(), &work->plan, &work->response, &work->scratch);
  } catch (const std::bad_alloc&) {
    return Answer(*work, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                      "out of memory while laying out the reply; retry later"));
  }
  for (size_t i = 0; i < work->plan.outputs.size(); ++i) {
    if (work->plan.outputs[i] == v2::OutputKind::kOutput && !work->scratch.empty()) {
      work->output_from_scratch = true;
    }
  }
  const uint32_t batch = work->plan.batch;
  {
    std::lock_guard<std::mutex> lock(work->mu);
    work->remaining = batch;
  }
  for (uint32_t b = 0; b < batch; ++b) {
    BatchTask task;
    task.input = std::move(work->plan.sequences[b]);
    task.deadline_us = deadline_us;
    task.cancelled = [work] { return work->cancelled->load() || work->failed.load(); };
    task.done = [this, work, b](absl::StatusOr<core::SequenceOutput> out,
                                const BatchStats& stats) {
      SequenceDone(work, b, std::move(out), stats);
    };
    if (absl::Status s = model->batcher->Submit(std::move(task)); !s.ok()) {
      // This one and the ones after it are never submitted: answer them here.
      bool last = false;
      {
        std::lock_guard<std::mutex> lock(work->mu);
        if (work->error.ok()) work->error = ToGrpcStatus(s);
        work->failed.store(true);
        work->remaining -= batch - b;
        last = work->remaining == 0;
      }
      if (last) Answer(*work, grpc::Status::OK);  // Answer takes work->error
      return;
    }
  }
}

void InferenceService::SequenceDone(const std::shared_ptr<InferWork>& work, uint32_t index,
                                    absl::StatusOr<core::SequenceOutput> out,
                                    const BatchStats& stats) {
  try {  // every sequence that reached a batch waited in its queue, whatever its fate
    metrics_->QueueWait(work->model, stats.queue_us / 1e6);
  } catch (...) {
  }
  if (out.ok() && work->attention != nullptr) {
    v2::CopyAttention(*out, index, work->plan.length, work->attention);
  }
  bool last = false;
  {
    std::lock_guard<std::mutex> lock(work->mu);
    if (!out.ok() && work->error.ok()) {
      work->error = ToGrpcStatus(out.status());
      work->failed.store(true);
    }
    work->stats.queue_us = std::max(work->stats.queue_us, stats.queue_us);
    work->stats.compute_us = std::max(work->stats.compute_us, stats.compute_us);
    work->stats.batch_size = std::max(work->stats.batch_size, stats.batch_size);
    work->stats.batch_tokens = std::max(work->stats.batch_tokens, stats.batch_tokens);
    last = --work->remaining == 0;
  }
  if (last) Answer(*work, grpc::Status::OK);
}

// Answers the call: with `status` when it is an error, else with the first
// sequence failure, else with the reply. Runs once per call, when nothing
// else touches `work`.
void InferenceService::Answer(InferWork& work, grpc::Status status) {
  BatchStats stats;
  {
    std::lock_guard<std::mutex> lock(work.mu);
    if (status.ok()) status = work.error;
    stats = work.stats;
  }
  grpc::ByteBuffer bytes;
  if (status.ok()) {
    try {
      if (work.output_from_scratch) {
        for (int i = 0; i < work.response.outputs_size(); ++i) {
          if (work.response.outputs(i).name() != v2::kOutputName) continue;
          std::string* raw = work.response.mutable_raw_output_contents(i);
          std::memcpy(raw->data(), work.scratch.data(), raw->size());
        }
      }
      SetStat(&work.response, "queue_us", stats.queue_us);
      SetStat(&work.response, "compute_us", stats.compute_us);
      SetStat(&work.response, "batch_size", stats.batch_size);
      SetStat(&work.response, "batch_tokens", stats.batch_tokens);
      bool own_buffer = false;
      status = grpc::SerializationTraits<inference::ModelInferResponse>::Serialize(
          work.response, &bytes, &own_buffer);
    } catch (const std::bad_alloc&) {
      status = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "out of memory while building the reply; retry later");
    } catch (...) {
      status = grpc::Status(grpc::StatusCode::INTERNAL, "building the reply failed");
    }
  }
  const std::string id = v2::ClipForMessage(work.request.id());  // logged: bounded
  // Free the request and reply now, not when the last batch holding a
  // sequence of this call is done.
  work.request = inference::ModelInferRequest();
  work.response = inference::ModelInferResponse();
  work.scratch = {};
  RecordInfer(work.model, id, status, work.received_us, stats);
  work.finish(status, std::move(bytes));
  EndRequest();
}

void InferenceService::RecordInfer(const std::string& model, const std::string& id,
                                   const grpc::Status& status, int64_t received_us,
                                   const BatchStats& stats) {
  CountCall("ModelInfer", status);
  try {
    const std::string code = StatusCodeName(status.error_code());
    metrics_->RequestFinished(model, code, (clock_->NowMicros() - received_us) / 1e6);
    metrics_->InflightAdd(-1);
    spdlog::debug("v2 id={} model={} status={} queue_us={} compute_us={} batch_size={}", id,
                  model, code, stats.queue_us, stats.compute_us, stats.batch_size);
    if (status.ok() || status.error_code() == grpc::StatusCode::CANCELLED) return;
    uint64_t suppressed = 0;
    if (failure_log_limiter_.Allow(&suppressed)) {
      spdlog::warn("v2 ModelInfer {} (model {}) failed: {} {}{}", id.empty() ? "(no id)" : id,
                   model, code, status.error_message(),
                   suppressed ? absl::StrCat(" (", suppressed, " similar warnings suppressed)")
                              : "");
    }
  } catch (...) {  // metrics and logs must not keep a call from being answered
  }
}

void InferenceService::BeginRequest() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++inflight_;
  }
  metrics_->InflightAdd(1);
}

void InferenceService::EndRequest() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--inflight_ == 0) idle_cv_.notify_all();
}

void InferenceService::StartDraining() {
  std::unique_lock<std::mutex> lock(mu_);
  draining_.store(true);
  idle_cv_.wait(lock, [this] { return submitting_ == 0; });
}

int64_t InferenceService::last_refusal_us() const { return last_refusal_us_.load(); }

void InferenceService::HoldUnsent() {
  std::lock_guard<std::mutex> lock(mu_);
  ++unsent_;
}

void InferenceService::ReleaseUnsent() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--unsent_ == 0) idle_cv_.notify_all();
}

bool InferenceService::WaitIdle(int64_t deadline_us) {
  std::unique_lock<std::mutex> lock(mu_);
  while (inflight_ != 0 || unsent_ != 0) {
    if (clock_->NowMicros() >= deadline_us) return false;
    clock_->WaitUntil(idle_cv_, lock, deadline_us);
  }
  return true;
}

}  // namespace attnserve::server
