#include "server/service.h"

#include <exception>
#include <limits>
#include <new>
#include <random>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/happens_before.h"
#include "server/reply.h"
#include "server/repository_service.h"
#include "server/status_names.h"
#include "server/validation.h"

namespace attnserve::server {
namespace {

// Label for requests naming a model we do not serve, and for bytes that do
// not parse: client strings never become label values (that would let
// clients grow the series without bound).
const std::string& UnknownModelLabel() {
  static const std::string* const label = new std::string("_unknown");
  return *label;
}

// Sizes the reply's output rows before the request is queued and points the
// engine at them, so the engine's unpacking writes straight into what the
// reply sends (server/reply.h: no copy through SequenceOutput::output, none
// into the message).
void PrepareOutput(uint32_t d_model, core::SequenceInput* input, ReplyFloats* output) {
  // Not zeroed: the engine writes every float.
  output->resize(size_t{core::OutputRowCount(*input)} * d_model);
  input->output_buffer = std::span<float>(*output);
}

// Parses `bytes` into *request; INVALID_ARGUMENT saying so when they are not
// an AttendRequest. Unknown field numbers are fine (skipped, as protobuf
// does); a known field sent with another valid wire type is one of them.
grpc::Status ParseRequest(const grpc::ByteBuffer& bytes, v1::AttendRequest* request) {
  if (!ParseFromByteBuffer(bytes, request)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("request could not be parsed as attnserve.v1.AttendRequest (",
                                     bytes.Length(),
                                     " bytes): not valid protobuf wire data for that message "
                                     "(truncated, a malformed field or an invalid wire type)"));
  }
  return grpc::Status::OK;
}

// The status of a request whose acceptance or reply threw: out of memory is
// RESOURCE_EXHAUSTED, anything else INTERNAL, each naming `during`. Never
// throws: if even the message cannot be built, the code comes alone.
grpc::Status StatusOfException(std::exception_ptr error, const char* during) noexcept {
  try {
    try {
      std::rethrow_exception(error);
    } catch (const std::bad_alloc&) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("out of memory while ", during, "; retry later"));
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat(during, " failed: ", e.what()));
    } catch (...) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat(during, " failed: a non-standard exception"));
    }
  } catch (...) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "");
  }
}

}  // namespace

// A request and its reply, shared by the task's callbacks until answered. The
// request's data is the engine's input; the reply's output matrix is the
// engine's output buffer.
struct AttentionService::Work {
  ReplyFn reply;
  int64_t received_us = 0;
  v1::AttendRequest request;
  v1::AttendResponse response;
  std::string id;     // the request_id, given or generated ("" until parsed)
  std::string model;  // the served model's name ("" until found)
  uint32_t length = 0;
  uint64_t admitted_bytes = 0;  // given to CallInfo::on_admitted
  ReplyFloats output;  // the engine's output (rows x d_model), sent as the reply's output
  uint32_t d_model = 0;
};

// One Attend call. OnCancel raises the flag the batcher polls; OnDone (after
// Finish) deletes the reactor. Handle may answer inline, before gRPC has
// bound the reactor: ServerUnaryReactor keeps such a Finish until it does.
// The status counts as unsent from Finish until OnDone (the drain waits).
class AttentionService::UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(AttentionService* service, grpc::CallbackServerContext* context,
            const grpc::ByteBuffer* request, grpc::ByteBuffer* response)
      : service_(service), cancelled_(std::make_shared<std::atomic<bool>>(false)) {
    const CallInfo call{service->DeadlineMicros(context), cancelled_, {}};
    // After Finish this reactor may be gone: the callback touches nothing else.
    // Its captures (two pointers) fit std::function's inline storage: no
    // allocation that could fail.
    service->Handle(*request, call, [this, response](Reply& reply) {
      if (reply.status.ok()) response->Swap(&reply.bytes);
      service_->HoldUnsent(1);
      Finish(std::move(reply.status));
    });
    // Handle has parsed the bytes: free them now rather than when the call
    // ends, as gRPC's own deserialization does. The buffer is the handler's
    // (non-const) per-call request object, handed to us as const.
    const_cast<grpc::ByteBuffer*>(request)->Clear();
  }

  void OnCancel() override {
    cancelled_->store(true);
    ATTN_HAPPENS_BEFORE(this);  // OnDone comes after (happens_before.h)
  }
  void OnDone() override {
    ATTN_HAPPENS_AFTER(this);
    service_->ReleaseUnsent(1);
    delete this;
  }

 private:
  AttentionService* const service_;
  const std::shared_ptr<std::atomic<bool>> cancelled_;
};

AttentionService::AttentionService(ModelRegistry* registry, Metrics* metrics, Clock* clock,
                                   const ServiceOptions& options, ServiceHooks hooks)
    : registry_(registry),
      metrics_(metrics),
      clock_(clock),
      options_(options),
      hooks_(std::move(hooks)),
      id_prefix_(absl::StrCat(absl::Hex(std::random_device{}(), absl::kZeroPad8), "-")),
      sessions_(std::make_unique<SessionTable>(
          options.sessions, options.session_clock ? options.session_clock : clock, metrics)),
      failure_log_limiter_(kFailureLogsPerSecond, clock) {}

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
  std::shared_ptr<Work> work;
  try {
    work = std::make_shared<Work>();
    work->reply = std::move(reply);  // std::function's move does not throw
    work->received_us = received_us;
    Admit(bytes, call, work);
  } catch (...) {
    // Admit threw: the request is neither answered nor queued.
    grpc::Status status = StatusOfException(std::current_exception(), "accepting the request");
    if (work == nullptr) {  // not even its Work: answer through `reply` directly
      RecordOutcome(UnknownModelLabel(), "", 0, status, received_us, {});
      Reply r{std::move(status), {}, {}, 0};
      reply(r);
      EndRequest();
      return;
    }
    Refuse(std::move(status), *work);
  }
}

void AttentionService::Admit(const grpc::ByteBuffer& bytes, const CallInfo& call,
                             const std::shared_ptr<Work>& work) {
  Work& w = *work;
  if (grpc::Status s = ParseRequest(bytes, &w.request); !s.ok()) return Refuse(std::move(s), w);
  w.id = w.request.request_id().empty() ? NewRequestId() : w.request.request_id();
  w.length = w.request.input().rows();
  w.response.set_request_id(w.id);
  // Held until the request is submitted: a model swapped out or unloaded
  // meanwhile still takes it (and answers it) on this version.
  const std::shared_ptr<ServedModel> model = registry_->Find(w.request.model());
  if (model == nullptr) return Refuse(ModelNotFound(w.request.model()), w);
  w.model = model->name();
  if (draining_.load()) {
    last_refusal_us_.store(clock_->NowMicros());
    return Refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "server is draining for shutdown; retry on another replica"),
                  w);
  }
  w.response.set_model(w.model);
  BatchTask task;
  if (grpc::Status s = ValidateRequest(w.request, w.model, model->config(),
                                       options_.max_message_bytes, &task.input);
      !s.ok()) {
    return Refuse(std::move(s), w);
  }
  if (hooks_.before_submit) hooks_.before_submit(w.request);
  task.deadline_us = call.deadline_us;
  task.cancelled = [cancelled = call.cancelled] { return cancelled->load(); };
  // The reply buffer is allocated only once the batcher has admitted the task.
  w.d_model = model->config().d_model;
  task.prepare = [work = &w](core::SequenceInput& input) {
    PrepareOutput(work->d_model, &input, &work->output);
  };
  task.done = [this, work](absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats) {
    Complete(*work, std::move(out), stats);
  };
  if (call.on_admitted) {  // the reply gives these bytes back, however it ends
    w.admitted_bytes = bytes.Length() + core::SequenceBytes(model->config(), task.input);
    call.on_admitted(w.admitted_bytes);
  }
  if (absl::Status s = model->batcher->Submit(std::move(task)); !s.ok()) {
    Refuse(ToGrpcStatus(s), w);
  }
}

grpc::Status AttentionService::ModelNotFound(const std::string& name) const {
  std::vector<std::string> names;
  const auto models = registry_->models();  // a snapshot, held for the loop
  for (const auto& m : *models) names.push_back(m->name());
  const std::string wanted = name.empty()
                                 ? absl::StrCat("the default model '", registry_->default_name(), "'")
                                 : absl::StrCat("model '", name, "'");
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat(wanted, " is not served here; served models: ",
                                   absl::StrJoin(names, ", ")));
}

void AttentionService::Refuse(grpc::Status status, Work& work) {
  const std::string& label = work.model.empty() ? UnknownModelLabel() : work.model;
  RecordOutcome(label, work.id, work.length, status, work.received_us, {});
  grpc::ByteBuffer none;
  Deliver(work, std::move(status), &none);
}

void AttentionService::Complete(Work& work, absl::StatusOr<core::SequenceOutput> out,
                                const BatchStats& stats) {
  grpc::ByteBuffer bytes;
  grpc::Status status;
  try {
    status = out.ok() ? BuildReply(*out, stats, &work, &bytes) : ToGrpcStatus(out.status());
  } catch (...) {  // ToGrpcStatus copies the message
    status = StatusOfException(std::current_exception(), "building the reply");
  }
  // Free the request, reply and weights now, not when the whole batch is done.
  out = absl::StatusOr<core::SequenceOutput>();
  work.request = v1::AttendRequest();
  work.response = v1::AttendResponse();
  work.output = ReplyFloats();
  try {  // every request that reached a batch waited in its queue, whatever its fate
    metrics_->QueueWait(work.model, stats.queue_us / 1e6);
  } catch (...) {  // metrics must not keep a call from being answered
  }
  RecordOutcome(work.model, work.id, work.length, status, work.received_us, stats);
  Deliver(work, std::move(status), &bytes);
}

void AttentionService::Deliver(Work& work, grpc::Status status, grpc::ByteBuffer* bytes) {
  Reply reply{std::move(status), {}, work.id, work.admitted_bytes};
  reply.bytes.Swap(bytes);
  work.reply(reply);
  EndRequest();
}

grpc::Status AttentionService::BuildReply(core::SequenceOutput& out, const BatchStats& stats,
                                          Work* work, grpc::ByteBuffer* bytes) {
  const uint32_t length = work->request.input().rows();
  const size_t matrices = out.attention.size();
  try {
    if (hooks_.before_reply) hooks_.before_reply(work->request);
    v1::Stats* s = work->response.mutable_stats();
    s->set_queue_us(stats.queue_us);
    s->set_compute_us(stats.compute_us);
    s->set_batch_size(stats.batch_size);
    s->set_batch_tokens(stats.batch_tokens);
    const auto rows = static_cast<uint32_t>(work->output.size() / work->d_model);
    return SerializeReply(work->response, rows, work->d_model,
                          std::move(work->output), std::move(out.attention), length, bytes);
  } catch (const std::bad_alloc&) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("out of memory while building the reply (L=", length,
                                     ", ", matrices, " attention matrices); retry later"));
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

void AttentionService::HoldUnsent(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  unsent_ += n;
}

void AttentionService::ReleaseUnsent(int64_t n) {
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  unsent_ -= n;
  if (unsent_ == 0) idle_cv_.notify_all();
}

void AttentionService::StartDraining() {
  draining_.store(true);  // before the table tells the sessions: see SessionCall::Open
  sessions_->StartDraining();
}

int64_t AttentionService::last_refusal_us() const { return last_refusal_us_.load(); }

bool AttentionService::WaitIdle(int64_t deadline_us) {
  std::unique_lock<std::mutex> lock(mu_);
  while (inflight_ != 0 || unsent_ != 0) {
    if (clock_->NowMicros() >= deadline_us) return false;
    clock_->WaitUntil(idle_cv_, lock, deadline_us);
  }
  return true;
}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return new UnaryCall(this, context, request, response);
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
