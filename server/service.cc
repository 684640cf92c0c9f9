#include "server/service.h"

#include <deque>
#include <memory>
#include <random>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/status_names.h"
#include "server/validation.h"

namespace attnserve::server {
namespace {

// Label for requests naming a model we do not serve: client strings never
// become label values (that would let clients grow the series without bound).
constexpr char kUnknownModelLabel[] = "_unknown";

// Sizes the reply's output matrix before the request is queued and points the
// engine at its data, so the engine's unpacking writes straight into the
// reply (no copy through SequenceOutput::output).
void PrepareOutput(uint32_t d_model, core::SequenceInput* input, v1::AttendResponse* response) {
  const uint32_t rows = input->pooling == core::Pooling::kNone ? input->length : 1;
  v1::Matrix* output = response->mutable_output();
  output->set_rows(rows);
  output->set_cols(d_model);
  const int n = static_cast<int>(rows * d_model);
  output->mutable_data()->Reserve(n);
  input->output_buffer = std::span<float>(output->mutable_data()->AddNAlreadyReserved(n), n);
}

void FillResponse(const core::SequenceOutput& out, uint32_t length, const BatchStats& stats,
                  v1::AttendResponse* response) {
  for (const core::WeightsMatrix& w : out.attention) {
    v1::Matrix* m = response->add_attention();
    m->set_rows(length);
    m->set_cols(length);
    m->mutable_data()->Add(w.begin(), w.end());
  }
  v1::Stats* s = response->mutable_stats();
  s->set_queue_us(stats.queue_us);
  s->set_compute_us(stats.compute_us);
  s->set_batch_size(stats.batch_size);
  s->set_batch_tokens(stats.batch_tokens);
}

// One AttendStream call. Each message goes through Handle (and the batcher);
// replies are written one at a time in completion order. The first failed
// message stops reading and, once everything accepted before it has been
// written, ends the stream with its status.
//
// Lifetime: gRPC's OnDone drops one reference and every message in flight
// holds one, so a batch thread finishing a message never touches a deleted
// reactor.
class StreamReactor final : public grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  StreamReactor(AttentionService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed, or the call is gone
      Act(Update([](StreamReactor* r) { r->reads_done_ = true; }));
      return;
    }
    // Held while this reaction runs: a message rejected inline may let a
    // batch thread finish the call (and OnDone drop its reference) meanwhile.
    refs_.fetch_add(1);
    auto request = std::make_shared<v1::AttendRequest>(std::move(incoming_));
    v1::AttendResponse* response = new v1::AttendResponse();  // owned by MessageDone
    Act(Update([](StreamReactor* r) { ++r->pending_; }));
    refs_.fetch_add(1);  // the message's reference, dropped by MessageDone
    service_->Handle(context_, request.get(), response, [this, request, response](const grpc::Status& s) {
      MessageDone(s, std::unique_ptr<v1::AttendResponse>(response), request->request_id());
    });
    {
      // Under the lock, so the call cannot be finished between the check and
      // StartRead. Safe: gRPC defers this reaction's completions until it returns.
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_set_ && !finished_) StartRead(&incoming_);
    }
    Unref();
  }

  void OnWriteDone(bool ok) override {
    Act(Update([ok](StreamReactor* r) {
      r->writes_.pop_front();
      r->writing_ = false;
      if (!ok) r->reads_done_ = true;  // the client is gone: nothing more to read
    }));
  }

  void OnDone() override { Unref(); }

 private:
  struct Action {
    v1::AttendResponse* write = nullptr;  // StartWrite this
    bool finish = false;                  // Finish with status
    grpc::Status status;
  };

  // Applies `change` under the lock, then decides the next gRPC operation.
  template <typename F>
  Action Update(F change) {
    std::lock_guard<std::mutex> lock(mu_);
    change(this);
    Action a;
    if (!writing_ && !writes_.empty()) {
      writing_ = true;
      a.write = writes_.front().get();
    } else if (!writing_ && writes_.empty() && pending_ == 0 && !finished_ &&
               (reads_done_ || error_set_)) {
      finished_ = true;
      a.finish = true;
      a.status = error_;
    }
    return a;
  }

  // Performs the decided operation, outside the lock.
  void Act(const Action& a) {
    if (a.write != nullptr) StartWrite(a.write);
    if (a.finish) Finish(a.status);
  }

  void MessageDone(const grpc::Status& status, std::unique_ptr<v1::AttendResponse> response,
                   const std::string& request_id) {
    Act(Update([&](StreamReactor* r) {
      --r->pending_;
      if (status.ok()) {
        r->writes_.push_back(std::move(response));
      } else if (!r->error_set_) {
        r->error_set_ = true;
        r->error_ = grpc::Status(status.error_code(),
                                 absl::StrCat("request_id ", request_id, ": ",
                                              status.error_message()));
      }
    }));
    Unref();
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  AttentionService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::AttendRequest incoming_;  // the read buffer; only touched by the read chain
  std::atomic<int> refs_{1};    // OnDone's, plus one per message in flight

  std::mutex mu_;
  std::deque<std::unique_ptr<v1::AttendResponse>> writes_;  // guarded by mu_; front is being written
  bool writing_ = false;     // guarded by mu_
  int pending_ = 0;          // guarded by mu_: messages handed to Handle, not yet done
  bool reads_done_ = false;  // guarded by mu_
  bool error_set_ = false;   // guarded by mu_
  bool finished_ = false;    // guarded by mu_
  grpc::Status error_;       // guarded by mu_
};

}  // namespace

AttentionService::AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                                   int64_t max_message_bytes)
    : registry_(registry),
      metrics_(metrics),
      clock_(clock),
      max_message_bytes_(max_message_bytes),
      id_prefix_(absl::StrCat(absl::Hex(std::random_device{}(), absl::kZeroPad8), "-")) {}

std::string AttentionService::NewRequestId() {
  return absl::StrCat(id_prefix_, next_id_.fetch_add(1));
}

int64_t AttentionService::DeadlineMicros(const grpc::CallbackServerContext* context) const {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::numeric_limits<int64_t>::max();
  }
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
      deadline - std::chrono::system_clock::now());
  return clock_->NowMicros() + left.count();
}

void AttentionService::Handle(grpc::CallbackServerContext* context,
                              const v1::AttendRequest* request, v1::AttendResponse* response,
                              FinishFn finish) {
  const int64_t received_us = clock_->NowMicros();
  const std::string id = request->request_id().empty() ? NewRequestId() : request->request_id();
  const uint32_t length = request->input().rows();
  response->set_request_id(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++inflight_;
  }
  metrics_->InflightAdd(1);
  auto reject = [&](const grpc::Status& status, const std::string& model_label) {
    Finished(model_label, id, length, status, received_us, {});
    finish(status);
    Release();
  };
  ServedModel* model = registry_->Find(request->model());
  if (model == nullptr) {
    std::vector<std::string> names;
    for (const auto& m : registry_->models()) names.push_back(m->name());
    return reject(grpc::Status(grpc::StatusCode::NOT_FOUND,
                               absl::StrCat("model '", request->model(),
                                            "' is not served here; served models: ",
                                            absl::StrJoin(names, ", "))),
                  kUnknownModelLabel);
  }
  if (draining_.load()) {
    last_refusal_us_.store(clock_->NowMicros());
    return reject(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "server is draining for shutdown; retry on another replica"),
                  model->name());
  }
  response->set_model(model->name());
  BatchTask task;
  if (grpc::Status s = ValidateRequest(*request, model->name(), model->config(),
                                       max_message_bytes_, &task.input);
      !s.ok()) {
    return reject(s, model->name());
  }
  const uint32_t d_model = model->config().d_model;
  PrepareOutput(d_model, &task.input, response);
  task.deadline_us = DeadlineMicros(context);
  task.cancelled = [context] { return context->IsCancelled(); };
  task.done = [this, response, finish, id, length, received_us, name = model->name()](
                  absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats) {
    const grpc::Status status = ToGrpcStatus(out.status());
    if (out.ok()) {
      FillResponse(*out, length, stats, response);
      metrics_->QueueWait(name, stats.queue_us / 1e6);
    }
    Finished(name, id, length, status, received_us, stats);
    finish(status);
    Release();
  };
  if (absl::Status s = model->batcher->Submit(std::move(task)); !s.ok()) {
    reject(ToGrpcStatus(s), model->name());
  }
}

void AttentionService::Finished(const std::string& model, const std::string& request_id,
                                uint32_t length, const grpc::Status& status, int64_t received_us,
                                const BatchStats& stats) {
  const std::string code = StatusCodeName(status.error_code());
  const double seconds = (clock_->NowMicros() - received_us) / 1e6;
  metrics_->RequestFinished(model, code, seconds);
  metrics_->InflightAdd(-1);
  spdlog::debug("request_id={} model={} L={} status={} queue_us={} compute_us={} batch_size={}",
               request_id, model, length, code, stats.queue_us, stats.compute_us,
               stats.batch_size);
  if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
    uint64_t suppressed = 0;
    if (reject_log_limiter_.Allow(&suppressed)) {
      spdlog::warn("request {} (model {}, L={}) failed: {} {}{}", request_id, model, length, code,
                   status.error_message(),
                   suppressed ? absl::StrCat(" (", suppressed, " similar warnings suppressed)")
                              : "");
    }
  }
}

void AttentionService::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--inflight_ == 0) idle_cv_.notify_all();
}

void AttentionService::StartDraining() { draining_.store(true); }

int64_t AttentionService::last_refusal_us() const { return last_refusal_us_.load(); }

bool AttentionService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [this] { return inflight_ == 0; });
}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const v1::AttendRequest* request,
                                                   v1::AttendResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Handle(context, request, response, [reactor](const grpc::Status& s) { reactor->Finish(s); });
  return reactor;
}

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  return new StreamReactor(this, context);
}

grpc::ServerUnaryReactor* AttentionService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* response) {
  for (const auto& m : registry_->models()) {
    const core::ModelConfig& c = m->config();
    v1::ModelInfo* info = response->add_models();
    info->set_name(m->name());
    info->set_d_model(c.d_model);
    info->set_num_heads(c.num_heads);
    info->set_max_length(c.max_length);
    info->set_positional(std::string(core::ToString(c.positional)));
    info->set_relevance(std::string(core::ToString(c.relevance)));
    info->set_normalization(std::string(core::ToString(c.normalization)));
    info->set_projections(c.projections);
    info->set_precision(std::string(core::ToString(c.precision)));
    info->set_is_default(m->name() == registry_->default_name());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attnserve::server
