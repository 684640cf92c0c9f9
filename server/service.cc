#include "server/service.h"

#include <deque>
#include <limits>
#include <new>
#include <random>

#include <grpcpp/support/proto_buffer_reader.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/repository_service.h"
#include "server/status_names.h"
#include "server/validation.h"

namespace attnserve::server {
namespace {

// Label for requests naming a model we do not serve, and for bytes that do
// not parse: client strings never become label values (that would let
// clients grow the series without bound).
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

// Parses `bytes` into *request; INVALID_ARGUMENT saying so when they are not
// an AttendRequest. Unknown field numbers are fine (skipped, as protobuf
// does); a known field sent with another valid wire type is one of them.
grpc::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttendRequest* request) {
  grpc::ByteBuffer view(bytes);  // shares the slices; the reader needs a mutable buffer
  grpc::ProtoBufferReader reader(&view);
  if (!reader.status().ok() || !request->ParseFromZeroCopyStream(&reader)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("request could not be parsed as attnserve.v1.AttendRequest (",
                                     bytes.Length(),
                                     " bytes): not valid protobuf wire data for that message "
                                     "(truncated, a malformed field or an invalid wire type)"));
  }
  return grpc::Status::OK;
}

}  // namespace

// A request and its reply, shared by the task's callback until answered. The
// request's data is the engine's input; the reply's output matrix is the
// engine's output buffer.
struct AttentionService::Work {
  v1::AttendRequest request;
  v1::AttendResponse response;
};

// One Attend call. OnCancel raises the flag the batcher polls; OnDone (after
// Finish) deletes the reactor. Handle may answer inline, before gRPC has
// bound the reactor: ServerUnaryReactor keeps such a Finish until it does.
class AttentionService::UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(AttentionService* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer* request, grpc::ByteBuffer* response)
      : cancelled_(std::make_shared<std::atomic<bool>>(false)) {
    const CallInfo call{service->DeadlineMicros(context), cancelled_};
    // After Finish this reactor may be gone: the callback touches nothing else.
    service->Handle(*request, call, [this, response](const Reply& reply) {
      if (reply.status.ok()) *response = reply.bytes;
      Finish(reply.status);
    });
    // Handle has parsed the bytes: free them now rather than when the call
    // ends, as gRPC's own deserialization does. The buffer is the handler's
    // (non-const) per-call request object, handed to us as const.
    const_cast<grpc::ByteBuffer*>(request)->Clear();
  }

  void OnCancel() override { cancelled_->store(true); }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<std::atomic<bool>> cancelled_;
};

// One AttendStream call: each message goes through Handle (and the batcher);
// replies are written one at a time in completion order.
//
// Every gRPC operation is decided under mu_ (Decide) and started outside it
// (Act). Invariants, all under mu_:
// - at most one read and one write outstanding;
// - held_ = messages accepted and not yet answered + replies not yet
//   written <= window: a read is started only below the window, so reading
//   resumes when OnWriteDone frees a slot;
// - no read starts once an error is set or the call is finishing; a read
//   that completes then is dropped, never handled;
// - Finish is decided once, when nothing is accepted-unanswered, nothing is
//   queued or being written, no StartRead is being issued, and reading is
//   over (client half-closed) or an error is set.
// Lifetime: OnDone drops one reference and every message in flight holds
// one, so a batch thread answering a message never touches a deleted reactor;
// the batcher sees cancellation only through the shared flag.
class AttentionService::StreamCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(AttentionService* service, grpc::CallbackServerContext* context)
      : service_(service),
        cancelled_(std::make_shared<std::atomic<bool>>(false)),
        call_{service->DeadlineMicros(context), cancelled_},
        window_(service->options_.stream_window) {
    Act(Update([](StreamCall*) {}));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed, or the call is gone
      Act(Update([](StreamCall* s) {
        s->reading_ = false;
        s->reads_done_ = true;
      }));
      return;
    }
    // reading_ stays true until incoming_ has been consumed and cleared: a
    // message answered meanwhile (inline, or by a batch thread) must not
    // start the next read into the buffer this reaction is still using.
    Ref();  // held while this reaction runs
    bool accept = false;
    int64_t index = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      accept = !error_set_ && !finishing_;
      if (accept) {
        ++unanswered_;
        index = ++messages_;
      }
    }
    if (accept) {
      Ref();  // the message's, dropped by MessageDone
      service_->Handle(incoming_, call_,
                       [this, index](const Reply& reply) { MessageDone(reply, index); });
    }
    incoming_.Clear();
    Act(Update([](StreamCall* s) { s->reading_ = false; }));
    Unref();
  }

  void OnWriteDone(bool ok) override {
    Act(Update([ok](StreamCall* s) {
      s->writes_.pop_front();
      s->writing_ = false;
      if (!ok) {  // the client is gone: nothing more can be written or read
        s->broken_ = true;
        s->reads_done_ = true;
        s->writes_.clear();
      }
    }));
  }

  void OnCancel() override { cancelled_->store(true); }
  void OnDone() override { Unref(); }

 private:
  struct Action {
    const grpc::ByteBuffer* write = nullptr;  // StartWrite this
    bool read = false;                        // StartRead
    bool finish = false;                      // Finish with status
    grpc::Status status;
  };

  // Applies `change` under the lock, then decides the next gRPC operations.
  template <typename F>
  Action Update(F change) {
    std::lock_guard<std::mutex> lock(mu_);
    change(this);
    Action a;
    if (finishing_) return a;
    if (!writing_ && !writes_.empty()) {
      writing_ = true;
      a.write = &writes_.front();  // deque elements stay put while others are added
    }
    if (!reading_ && !reads_done_ && !error_set_ &&
        unanswered_ + static_cast<int64_t>(writes_.size()) < window_) {
      reading_ = true;
      ++starting_reads_;
      a.read = true;
    }
    if (!writing_ && writes_.empty() && unanswered_ == 0 && starting_reads_ == 0 &&
        (reads_done_ || error_set_)) {
      finishing_ = true;
      a.finish = true;
      a.status = broken_ ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away")
                         : error_;
    }
    return a;
  }

  // Performs the decided operations, outside the lock.
  void Act(const Action& a) {
    if (a.write != nullptr) StartWrite(a.write);
    if (a.read) {
      StartRead(&incoming_);
      // The read is issued: Finish may now be decided (the read then fails).
      Act(Update([](StreamCall* s) { --s->starting_reads_; }));
    }
    if (a.finish) Finish(a.status);
  }

  void MessageDone(const Reply& reply, int64_t index) {
    Act(Update([&](StreamCall* s) {
      --s->unanswered_;
      if (reply.status.ok()) {
        if (!s->broken_) s->writes_.push_back(reply.bytes);  // a ByteBuffer copy shares slices
      } else if (!s->error_set_) {
        s->error_set_ = true;
        s->error_ = grpc::Status(
            reply.status.error_code(),
            absl::StrCat(reply.request_id.empty() ? absl::StrCat("message ", index)
                                                  : absl::StrCat("request_id ", reply.request_id),
                         ": ", reply.status.error_message()));
      }
    }));
    Unref();
  }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  AttentionService* const service_;
  const std::shared_ptr<std::atomic<bool>> cancelled_;
  const CallInfo call_;
  const int64_t window_;
  grpc::ByteBuffer incoming_;  // the read buffer; only touched by the read chain
  std::atomic<int> refs_{1};   // OnDone's, plus one per message in flight

  std::mutex mu_;
  // Replies waiting; the front is being written while writing_.
  std::deque<grpc::ByteBuffer> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;         // a read is outstanding
  // StartReads decided, not yet issued: a count, since a read decided in one
  // reaction may complete and the next be decided before the first returns.
  int starting_reads_ ABSL_GUARDED_BY(mu_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  int64_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;       // handed to Handle, not yet answered
  int64_t messages_ ABSL_GUARDED_BY(mu_) = 0;         // accepted so far
  bool error_set_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status error_ ABSL_GUARDED_BY(mu_);
  bool broken_ ABSL_GUARDED_BY(mu_) = false;          // a write failed: the client is gone
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;       // Finish decided
};

AttentionService::AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                                   const ServiceOptions& options, ServiceHooks hooks)
    : registry_(registry),
      metrics_(metrics),
      clock_(clock),
      options_(options),
      hooks_(std::move(hooks)),
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

void AttentionService::Handle(const grpc::ByteBuffer& bytes, const CallInfo& call,
                              ReplyFn reply) {
  const int64_t received_us = clock_->NowMicros();
  BeginRequest();
  auto work = std::make_shared<Work>();
  if (grpc::Status s = ParseRequest(bytes, &work->request); !s.ok()) {
    return Refuse(s, kUnknownModelLabel, "", 0, received_us, reply);
  }
  const v1::AttendRequest& request = work->request;
  const std::string id = request.request_id().empty() ? NewRequestId() : request.request_id();
  const uint32_t length = request.input().rows();
  work->response.set_request_id(id);
  // Held until the request is submitted: a model swapped out or unloaded
  // meanwhile still takes it (and answers it) on this version.
  const std::shared_ptr<ServedModel> model = registry_->Find(request.model());
  if (model == nullptr) {
    std::vector<std::string> names;
    const auto models = registry_->models();  // a snapshot, held for the loop
    for (const auto& m : *models) names.push_back(m->name());
    const std::string wanted =
        request.model().empty() ? absl::StrCat("the default model '", registry_->default_name(), "'")
                                : absl::StrCat("model '", request.model(), "'");
    return Refuse(grpc::Status(grpc::StatusCode::NOT_FOUND,
                               absl::StrCat(wanted, " is not served here; served models: ",
                                            absl::StrJoin(names, ", "))),
                  kUnknownModelLabel, id, length, received_us, reply);
  }
  if (draining_.load()) {
    last_refusal_us_.store(clock_->NowMicros());
    return Refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "server is draining for shutdown; retry on another replica"),
                  model->name(), id, length, received_us, reply);
  }
  work->response.set_model(model->name());
  BatchTask task;
  if (grpc::Status s = ValidateRequest(request, model->name(), model->config(),
                                       options_.max_message_bytes, &task.input);
      !s.ok()) {
    return Refuse(s, model->name(), id, length, received_us, reply);
  }
  PrepareOutput(model->config().d_model, &task.input, &work->response);
  task.deadline_us = call.deadline_us;
  task.cancelled = [cancelled = call.cancelled] { return cancelled->load(); };
  task.done = [this, work, reply, id, length, received_us, name = model->name()](
                  absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats) {
    grpc::ByteBuffer bytes;
    const grpc::Status status =
        out.ok() ? BuildReply(*out, stats, work.get(), &bytes) : ToGrpcStatus(out.status());
    // Free the request and reply now, not when the whole batch is done.
    work->request = v1::AttendRequest();
    work->response = v1::AttendResponse();
    try {  // every request that reached a batch waited in its queue, whatever its fate
      metrics_->QueueWait(name, stats.queue_us / 1e6);
    } catch (...) {  // metrics must not keep a call from being answered
    }
    RecordOutcome(name, id, length, status, received_us, stats);
    reply(Reply{status, std::move(bytes), id});
    EndRequest();
  };
  if (absl::Status s = model->batcher->Submit(std::move(task)); !s.ok()) {
    Refuse(ToGrpcStatus(s), model->name(), id, length, received_us, reply);
  }
}

void AttentionService::Refuse(const grpc::Status& status, const std::string& model_label,
                              const std::string& id, uint32_t length, int64_t received_us,
                              const ReplyFn& reply) {
  RecordOutcome(model_label, id, length, status, received_us, {});
  reply(Reply{status, {}, id});
  EndRequest();
}

grpc::Status AttentionService::BuildReply(const core::SequenceOutput& out,
                                          const BatchStats& stats, Work* work,
                                          grpc::ByteBuffer* bytes) {
  const uint32_t length = work->request.input().rows();
  try {
    if (hooks_.before_reply) hooks_.before_reply(work->request);
    FillResponse(out, length, stats, &work->response);
    bool own_buffer = false;
    return grpc::SerializationTraits<v1::AttendResponse>::Serialize(work->response, bytes,
                                                                    &own_buffer);
  } catch (const std::bad_alloc&) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("out of memory while building the reply (L=", length,
                                     ", ", out.attention.size(),
                                     " attention matrices); retry later"));
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat("building the reply failed: ", e.what()));
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "building the reply failed: a non-standard exception");
  }
}

void AttentionService::RecordOutcome(const std::string& model, const std::string& request_id,
                                     uint32_t length, const grpc::Status& status,
                                     int64_t received_us, const BatchStats& stats) {
  try {
    const std::string code = StatusCodeName(status.error_code());
    const double seconds = (clock_->NowMicros() - received_us) / 1e6;
    metrics_->RequestFinished(model, code, seconds);
    metrics_->InflightAdd(-1);
    spdlog::debug("request_id={} model={} L={} status={} queue_us={} compute_us={} batch_size={}",
                  request_id, model, length, code, stats.queue_us, stats.compute_us,
                  stats.batch_size);
    if (status.ok() || status.error_code() == grpc::StatusCode::CANCELLED) return;
    uint64_t suppressed = 0;
    if (failure_log_limiter_.Allow(&suppressed)) {
      spdlog::warn("request {} (model {}, L={}) failed: {} {}{}",
                   request_id.empty() ? "(unparsed)" : request_id, model, length, code,
                   status.error_message(),
                   suppressed ? absl::StrCat(" (", suppressed, " similar warnings suppressed)")
                              : "");
    }
  } catch (...) {  // metrics and logs must not keep a call from being answered
  }
}

void AttentionService::BeginRequest() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++inflight_;
  }
  metrics_->InflightAdd(1);
}

void AttentionService::EndRequest() {
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
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return new UnaryCall(this, context, request, response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  return new StreamCall(this, context);
}

grpc::ServerUnaryReactor* AttentionService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* response) {
  const auto models = registry_->models();  // a snapshot, held for the loop
  for (const auto& m : *models) {
    FillModelInfo(*m, m->name() == registry_->default_name(), response->add_models());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attnserve::server
