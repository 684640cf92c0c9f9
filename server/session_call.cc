// AttentionService::SessionCall, the reactor of one Attention.Session call (a
// streaming session with a key/value cache), and AttentionService::Session.
//
// The first message opens the session: the model is found, its largest cache
// reserved in the SessionTable (or the open refused) and allocated, and the
// SessionOpened reply queued. Each later message is one chunk: validated,
// submitted to the model's batcher with the session's cache (so it shares
// batches with other sessions' chunks and ordinary requests), and answered
// with the chunk's rows. One chunk computes at a time and the next message
// is read only once it has been answered, so chunks run in order and a
// session holds at most one message, one chunk computing and two replies.
//
// Every gRPC operation is decided under mu_ (Update) and started outside it
// (Act), as in StreamCall:
// - at most one read and one write outstanding;
// - a read starts only while nothing computes, no error is set, the session
//   is not draining or idle-ended, and at most one reply waits unwritten (a
//   slow reader stops the reading);
// - Finish is decided once, when nothing computes, nothing waits to be
//   written, no received message is being handled, no StartRead or
//   TryCancel is being issued, and reading is over (half-close), or an
//   error, idle end or drain is set; the status is the error's, or
//   UNAVAILABLE when draining, else OK. A message that arrives once the
//   session is ending is dropped unhandled.
// Delivery: each queued reply and the final status hold one of the service's
// unsent count until written (or failed) and until OnDone; each chunk from
// submission to answer is one BeginRequest/EndRequest, so the drain waits
// for both.
// Lifetime: OnDone drops one reference, a chunk computing holds one and the
// table's hook takes one while it calls in, so nothing touches a deleted
// reactor; the cache lives as long as the reactor (after OnDone, only until
// a chunk still computing is answered). The reservation is released at
// OnDone: a cancelled or broken stream frees its place at once (once a
// chunk it was computing has finished).
#include <atomic>
#include <list>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <utility>

#include <grpcpp/support/proto_buffer_writer.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/kv_cache.h"
#include "server/happens_before.h"
#include "server/service.h"
#include "server/sessions.h"
#include "server/validation.h"

namespace attnserve::server {
namespace {

// Serializes `message` into a ByteBuffer (protobuf's own encoding).
grpc::Status Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  bool own = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, out,
                                                                                     &own);
}

grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

}  // namespace

class AttentionService::SessionCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  SessionCall(AttentionService* service, grpc::CallbackServerContext* context)
      : service_(service),
        context_(context),
        cancelled_(std::make_shared<std::atomic<bool>>(false)),
        hook_(std::make_shared<Hook>(this)) {
    Act(Update([](SessionCall*) {}));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed, or the call is gone
      Act(Update([](SessionCall* s) {
        s->reading_ = false;
        s->reads_done_ = true;
      }));
      return;
    }
    Ref();
    const UnrefOnExit reaction{this};
    bool handle = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A message that arrives once the session is ending (an error, idle,
      // drain: its read was outstanding) is dropped, never handled. Else it
      // holds Finish off until handled, and is activity: a pending idle end
      // is called off.
      handle = !error_set_ && !draining_ && !finishing_;
      handling_ = handle;
      if (handle) idle_pending_ = false;
    }
    if (handle && lease_ != nullptr) lease_->Touch();
    grpc::Status error;
    try {
      if (handle) error = Handle();
    } catch (const std::bad_alloc&) {
      error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                           "out of memory handling the session's message; retry later");
    } catch (const std::exception& e) {
      error = grpc::Status(grpc::StatusCode::INTERNAL,
                           absl::StrCat("handling the session's message failed: ", e.what()));
    }
    incoming_.Clear();
    Act(Update([&error](SessionCall* s) {
      s->reading_ = false;
      s->handling_ = false;
      if (!error.ok()) s->SetErrorLocked(std::move(error), "error");
    }));
  }

  void OnWriteDone(bool ok) override {
    int64_t ended = 1;
    Act(Update([ok, &ended](SessionCall* s) {
      s->writes_.pop_front();
      s->writing_ = false;
      if (s->idle_pending_) s->SetErrorLocked(std::move(s->idle_status_), "idle");
      if (!ok) {  // the client is gone: nothing more can be written or read
        s->broken_ = true;
        s->reads_done_ = true;
        ended += static_cast<int64_t>(s->writes_.size());
        s->writes_.clear();
      }
    }));
    // Not activity: the idle time counts from the last message received (or
    // the end of its chunk's computation), which the client can see.
    service_->ReleaseUnsent(ended);
  }

  void OnCancel() override {
    cancelled_->store(true);
    ATTN_HAPPENS_BEFORE(this);  // OnDone comes after (happens_before.h)
  }

  void OnDone() override {
    ATTN_HAPPENS_AFTER(this);
    hook_->Detach();
    bool finished = false;
    const char* reason = "cancelled";
    const bool cancelled = cancelled_->load() || context_->IsCancelled();
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished = finishing_;
      // The client went away (a failed read or write, a cancel, its deadline)
      // unless the session had already ended for a reason of its own.
      if (error_set_ || (finishing_ && !broken_ && !cancelled)) reason = end_reason_;
    }
    if (finished) service_->ReleaseUnsent(1);  // the status Act handed to Finish
    std::unique_ptr<SessionTable::Lease> lease;
    {
      std::lock_guard<std::mutex> lock(mu_);  // a chunk's answer may be using it
      lease = std::move(lease_);
    }
    if (lease != nullptr) {
      lease.reset();  // the reservation goes now; the cache with the last reference
      try {
        service_->metrics_->SessionEnded(reason);
        spdlog::debug("session_id={} model={} ended: {} after {} rows", session_id_, model_name_,
                      reason, positions_);
      } catch (...) {  // metrics and logs must not keep the call from ending
      }
    }
    Unref();
  }

 private:
  // The table's way in (SessionTable::Listener). It outlives the reactor when
  // the table still holds it; Detach (OnDone) cuts it off.
  class Hook final : public SessionTable::Listener {
   public:
    explicit Hook(SessionCall* call) : call_(call) {}
    bool OnIdle(int64_t idle_us) override {
      SessionCall* c = Take();
      if (c == nullptr) return true;  // ended meanwhile
      const bool ended = c->Idle(idle_us);
      c->Unref();
      return ended;
    }
    void OnDrain() override {
      if (SessionCall* c = Take()) {
        c->Drain();
        c->Unref();
      }
    }
    void Detach() {
      std::lock_guard<std::mutex> lock(mu_);
      call_ = nullptr;
    }

   private:
    SessionCall* Take() {
      std::lock_guard<std::mutex> lock(mu_);
      if (call_ != nullptr) call_->Ref();  // before Detach: the reactor stays
      return call_;
    }
    std::mutex mu_;
    SessionCall* call_;
  };

  struct Action {
    const grpc::ByteBuffer* write = nullptr;
    bool read = false;
    bool finish = false;
    bool cancel = false;  // TryCancel: a reply stuck on a reader that is gone idle
    grpc::Status status;
  };
  struct UnrefOnExit {
    SessionCall* call;
    ~UnrefOnExit() { call->Unref(); }
  };

  template <typename F>
  Action Update(F change) {
    std::lock_guard<std::mutex> lock(mu_);
    change(this);
    Action a;
    if (finishing_) return a;
    if (!writing_ && !writes_.empty()) {
      writing_ = true;
      a.write = &writes_.front();  // list elements stay put while others are added
    }
    const bool ending = error_set_ || draining_;
    if (!reading_ && !reads_done_ && !ending && !computing_ && writes_.size() <= 1) {
      reading_ = true;
      ++starting_reads_;
      a.read = true;
    }
    if (!writing_ && writes_.empty() && !computing_ && !handling_ && !cancelling_ &&
        starting_reads_ == 0 && (reads_done_ || ending)) {
      finishing_ = true;
      a.finish = true;
      if (error_set_) {
        a.status = std::move(error_);
      } else if (draining_) {
        end_reason_ = "draining";
        a.status = grpc::Status(grpc::StatusCode::UNAVAILABLE, drain_message_);
      } else {
        end_reason_ = "closed";
      }
    } else if (error_set_ && writing_ && idle_ended_ && !cancel_sent_) {
      cancel_sent_ = true;  // the reader stopped reading: its write would never end
      cancelling_ = true;   // no Finish (so no OnDone, no freed context) until issued
      a.cancel = true;
    }
    return a;
  }

  void Act(Action a) {
    if (a.write != nullptr) StartWrite(a.write);
    if (a.read) {
      StartRead(&incoming_);
      Act(Update([](SessionCall* s) { --s->starting_reads_; }));
    }
    if (a.finish) {
      service_->HoldUnsent(1);  // released by OnDone
      Finish(std::move(a.status));
    }
    if (a.cancel) {
      context_->TryCancel();
      Act(Update([](SessionCall* s) { s->cancelling_ = false; }));
    }
  }

  // REQUIRES: mu_ held. The first error ends the session with its status.
  void SetErrorLocked(grpc::Status status, const char* reason) {
    if (error_set_) return;
    error_set_ = true;
    error_ = std::move(status);
    end_reason_ = reason;
  }

  // SessionTable::Listener::OnIdle. A reply still being written usually
  // ends at once (the client has read it; OnWriteDone has yet to run): the
  // session then ends when it does. One still unwritten a whole idle timeout
  // later sits on a client that stopped reading: the call is cancelled.
  bool Idle(int64_t idle_us) {
    grpc::Status status = IdleStatus(idle_us);
    bool ended = true;
    Act(Update([&](SessionCall* s) {
      if (s->handling_ || s->computing_) {  // a message arrived since the table looked
        ended = false;
        return;
      }
      if (s->writing_ && !s->idle_pending_) {
        s->idle_pending_ = true;
        s->idle_status_ = std::move(status);
        ended = false;
        return;
      }
      s->idle_ended_ = true;
      s->SetErrorLocked(s->idle_pending_ ? std::move(s->idle_status_) : std::move(status),
                        "idle");
    }));
    return ended;
  }

  grpc::Status IdleStatus(int64_t idle_us) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        absl::StrCat("session idle for ", idle_us / 1'000'000,
                                     " s (the server's --session-idle-timeout-s is ",
                                     service_->sessions_->options().idle_timeout_us / 1'000'000,
                                     " s); its cache was freed after ", positions(),
                                     " rows: open a new session"));
  }

  void Drain() {
    Act(Update([](SessionCall* s) { s->draining_ = true; }));
  }

  uint64_t positions() {
    std::lock_guard<std::mutex> lock(mu_);
    return positions_;
  }

  // One message: the open, or a chunk. An error ends the session. Runs on
  // the read's reaction; the only reaction that touches the session's setup.
  grpc::Status Handle() {
    if (!ParseFromByteBuffer(incoming_, &request_)) {
      return Invalid(absl::StrCat("message could not be parsed as attnserve.v1.SessionRequest (",
                                  incoming_.Length(), " bytes)"));
    }
    if (model_ == nullptr) return Open();
    return Append();
  }

  grpc::Status Open() {
    if (request_.kind_case() != v1::SessionRequest::kOpen) {
      return Invalid("the first message of a session must be `open` (SessionOpen)");
    }
    const v1::SessionOpen& open = request_.open();
    std::shared_ptr<ServedModel> model = service_->registry_->Find(open.model());
    if (model == nullptr) return service_->ModelNotFound(open.model());
    if (service_->draining_.load()) return DrainingStatus();
    const core::ModelConfig& c = model->config();
    if (open.weights() < v1::WEIGHTS_NONE || open.weights() > v1::WEIGHTS_MEAN) {
      return Invalid("unknown weights enum value; see attention.proto");
    }
    const size_t row_bytes = model->kv_row_bytes();
    if (row_bytes == 0) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                          absl::StrCat("model '", model->name(), "' cannot serve sessions"));
    }
    // The rows the session may reach: its own max_tokens, and sinusoidal or
    // learned positions end at max_length. 0 = no end.
    uint64_t limit = open.max_tokens();
    if (c.positional == core::Positional::kSinusoidal ||
        c.positional == core::Positional::kLearned) {
      limit = limit == 0 ? c.max_length : std::min<uint64_t>(limit, c.max_length);
    }
    uint64_t rows = open.window() != 0 ? open.window() : (limit != 0 ? limit : c.max_length);
    if (limit != 0) rows = std::min(rows, limit);
    if (rows > std::numeric_limits<uint32_t>::max()) {
      return Invalid(absl::StrCat("max_tokens ", open.max_tokens(),
                                  " with window 0 would keep more rows than a session can (",
                                  std::numeric_limits<uint32_t>::max(), ")"));
    }
    const uint64_t bytes = rows * row_bytes;
    absl::StatusOr<std::unique_ptr<SessionTable::Lease>> lease =
        service_->sessions_->Open(bytes, hook_);
    if (!lease.ok()) return ToGrpcStatus(lease.status());
    // Drain may have begun after the check above, and told the open sessions
    // before this one was among them.
    if (service_->draining_.load()) return DrainingStatus();
    try {
      cache_ = std::make_unique<core::KvCache>(static_cast<uint32_t>(rows), row_bytes);
    } catch (const std::bad_alloc&) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("out of memory for the session's cache of ", bytes,
                                       " bytes; retry later"));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      lease_ = *std::move(lease);
    }
    model_ = std::move(model);
    model_name_ = model_->name();
    window_ = open.window();
    weights_ = static_cast<core::WeightsMode>(open.weights());
    max_tokens_ = limit;
    session_id_ = open.session_id().empty() ? service_->NewRequestId() : open.session_id();
    v1::SessionResponse reply;
    reply.set_session_id(session_id_);
    v1::SessionOpened* o = reply.mutable_opened();
    o->set_model(model_name_);
    o->set_version(model_->version());
    o->set_d_model(c.d_model);
    o->set_window(window_);
    o->set_max_tokens(limit);
    o->set_cache_rows(static_cast<uint32_t>(rows));
    o->set_cache_bytes(bytes);
    spdlog::debug("session_id={} model={} opened: window {}, cache {} rows, {} bytes", session_id_,
                  model_name_, window_, rows, bytes);
    return QueueReply(reply);
  }

  grpc::Status Append() {
    if (request_.kind_case() != v1::SessionRequest::kAppend) {
      return Invalid("the session is open: every message after the first must be `append`");
    }
    const core::ModelConfig& c = model_->config();
    const v1::Matrix& input = request_.append().input();
    if (grpc::Status s = ValidateInputMatrix(input, model_name_, c); !s.ok()) return s;
    const uint64_t position = cache_->positions();  // no chunk computes: stable
    if (max_tokens_ != 0 && position + input.rows() > max_tokens_) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                          absl::StrCat("the session would reach ", position + input.rows(),
                                       " rows; it may append ", max_tokens_,
                                       " (max_tokens, or the model's max_length)"));
    }
    BatchTask task;
    core::SequenceInput& seq = task.input;
    seq.data = std::span<const float>(input.data().data(), input.data_size());
    seq.length = input.rows();
    seq.mask.causal = true;
    seq.mask.window = window_;
    seq.weights = weights_;
    seq.cache = cache_.get();
    if (absl::Status s = core::ValidateSequence(c, seq); !s.ok()) return ToGrpcStatus(s);
    seq.values_checked = true;
    const uint64_t matrices = core::WeightsMatrixCount(c, weights_);
    const uint64_t reply_bytes =
        (uint64_t{seq.length} * c.d_model + matrices * seq.length * core::KeyCount(seq)) * 4 + 256;
    if (reply_bytes > static_cast<uint64_t>(service_->options_.max_message_bytes)) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("the chunk's reply would be about ", reply_bytes,
                                       " bytes, over the server's max message size of ",
                                       service_->options_.max_message_bytes,
                                       " bytes; send fewer rows per chunk"));
    }
    task.cancelled = [cancelled = cancelled_] { return cancelled->load(); };
    task.done = [this](absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats) {
      Computed(std::move(out), stats);
    };
    {
      std::lock_guard<std::mutex> lock(mu_);
      computing_ = true;
    }
    Ref();  // the chunk's, dropped by Computed
    service_->BeginRequest();
    lease_->SetBusy(true);  // only reactions and Computed (not running now) touch lease_ here
    chunk_position_ = position;
    chunk_keys_ = core::KeyCount(seq);
    absl::Status submitted;
    try {
      submitted = model_->batcher->Submit(std::move(task));
    } catch (const std::bad_alloc&) {  // Submit's contract: nothing queued, nothing charged
      submitted = absl::ResourceExhaustedError("out of memory queueing the chunk; retry later");
    }
    if (!submitted.ok()) {
      lease_->SetBusy(false);
      service_->metrics_->InflightAdd(-1);
      service_->EndRequest();
      {
        std::lock_guard<std::mutex> lock(mu_);
        computing_ = false;
      }
      Unref();
      // The batcher refuses with UNAVAILABLE once the server drains.
      if (submitted.code() == absl::StatusCode::kUnavailable && service_->draining_.load()) {
        return DrainingStatus();
      }
      return ToGrpcStatus(submitted);
    }
    return grpc::Status::OK;
  }

  // The batch thread's answer to the chunk.
  void Computed(absl::StatusOr<core::SequenceOutput> out, const BatchStats& stats) {
    {
      // Before the reply can reach the client: the idle time it sees
      // starts no later than this.
      std::lock_guard<std::mutex> lock(mu_);
      if (lease_ != nullptr) lease_->SetBusy(false);  // OnDone may have released it
    }
    grpc::Status error;
    bool replied = false;
    if (out.ok()) {
      try {
        v1::SessionResponse reply;
        reply.set_session_id(session_id_);
        reply.set_position(chunk_position_);
        reply.set_first_key(chunk_position_ + out->rows - chunk_keys_);
        const uint32_t d = model_->config().d_model;
        v1::Matrix* o = reply.mutable_output();
        o->set_rows(out->rows);
        o->set_cols(d);
        o->mutable_data()->Add(out->output.begin(), out->output.end());
        for (const core::WeightsMatrix& m : out->attention) {
          v1::Matrix* w = reply.add_attention();
          w->set_rows(out->rows);
          w->set_cols(chunk_keys_);
          w->mutable_data()->Add(m.begin(), m.end());
        }
        v1::Stats* s = reply.mutable_stats();
        s->set_queue_us(stats.queue_us);
        s->set_compute_us(stats.compute_us);
        s->set_batch_size(stats.batch_size);
        s->set_batch_tokens(stats.batch_tokens);
        out = absl::StatusOr<core::SequenceOutput>();  // free the engine's buffers first
        {
          std::lock_guard<std::mutex> lock(mu_);  // before the client can see the reply
          positions_ = cache_->positions();
        }
        error = QueueReply(reply);
        replied = error.ok();
      } catch (const std::bad_alloc&) {
        error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "out of memory building the chunk's reply; retry later");
      }
    } else {
      error = ToGrpcStatus(out.status());
    }
    request_.Clear();  // the chunk's data: not needed any more
    try {
      service_->metrics_->QueueWait(model_name_, stats.queue_us / 1e6);
      service_->metrics_->InflightAdd(-1);
      if (replied) service_->metrics_->SessionAppended(model_name_);
    } catch (...) {
    }
    Act(Update([&](SessionCall* s) {
      s->computing_ = false;
      if (!error.ok()) s->SetErrorLocked(std::move(error), "error");
    }));
    service_->EndRequest();
    Unref();
  }

  // Serializes `reply` and queues it for writing.
  grpc::Status QueueReply(const v1::SessionResponse& reply) {
    grpc::ByteBuffer bytes;
    if (grpc::Status s = Serialize(reply, &bytes); !s.ok()) return s;
    std::list<grpc::ByteBuffer> queued;  // allocated here, spliced in under the lock
    queued.emplace_back();
    queued.back().Swap(&bytes);
    service_->HoldUnsent(1);  // before a write could complete
    bool dropped = false;
    Act(Update([&](SessionCall* s) {
      if (s->broken_ || s->finishing_) {
        dropped = true;
      } else {
        s->writes_.splice(s->writes_.end(), queued);
      }
    }));
    if (dropped) service_->ReleaseUnsent(1);
    return grpc::Status::OK;
  }

  grpc::Status DrainingStatus() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, drain_message_);
  }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  AttentionService* const service_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const std::shared_ptr<std::atomic<bool>> cancelled_;
  const std::shared_ptr<Hook> hook_;
  const std::string drain_message_ =
      "server is draining for shutdown: every chunk received was answered; open the "
      "session again on another replica";
  std::atomic<int> refs_{1};

  // Set by the open (read reaction), then read by every later reaction and
  // the batch thread: the reads are ordered after it by the call's
  // operations and the batcher's lock.
  grpc::ByteBuffer incoming_;
  v1::SessionRequest request_;  // the message being handled or computed
  std::shared_ptr<ServedModel> model_;
  std::string model_name_;
  std::string session_id_;
  uint32_t window_ = 0;
  core::WeightsMode weights_ = core::WeightsMode::kNone;
  uint64_t max_tokens_ = 0;
  std::unique_ptr<core::KvCache> cache_;
  // Set by the open; released by OnDone, while a chunk's answer may run.
  std::unique_ptr<SessionTable::Lease> lease_ ABSL_GUARDED_BY(mu_);
  uint64_t chunk_position_ = 0;  // of the chunk computing
  uint32_t chunk_keys_ = 0;

  std::mutex mu_;
  std::list<grpc::ByteBuffer> writes_ ABSL_GUARDED_BY(mu_);  // front: being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  int starting_reads_ ABSL_GUARDED_BY(mu_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool computing_ ABSL_GUARDED_BY(mu_) = false;
  bool handling_ ABSL_GUARDED_BY(mu_) = false;    // a message's reaction is handling it
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;  // a TryCancel decided, not yet issued
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool idle_ended_ ABSL_GUARDED_BY(mu_) = false;
  // Idle while a reply was being written: the session ends with idle_status_
  // when the write completes (or at the next idle check, cancelled).
  bool idle_pending_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status idle_status_ ABSL_GUARDED_BY(mu_);
  bool cancel_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool error_set_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status error_ ABSL_GUARDED_BY(mu_);
  const char* end_reason_ ABSL_GUARDED_BY(mu_) = "closed";
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t positions_ ABSL_GUARDED_BY(mu_) = 0;  // rows answered so far
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::Session(
    grpc::CallbackServerContext* context) {
  return new SessionCall(this, context);
}

}  // namespace attnserve::server
