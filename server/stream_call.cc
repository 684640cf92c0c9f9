// AttentionService::StreamCall, the reactor of one AttendStream call, and
// AttentionService::AttendStream. See service.h for the contract.
#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/happens_before.h"
#include "server/service.h"

namespace attnserve::server {

// Each message goes through Handle (and the batcher); replies are written one
// at a time in completion order.
//
// Every gRPC operation is decided under mu_ (Update) and started outside it
// (Act). Invariants, all under mu_:
// - at most one read and one write outstanding;
// - held_ = messages accepted and not yet answered + replies not yet written
//   <= window, and a read starts only while held_ < window and held_bytes_ <
//   window_bytes, so reading resumes when OnWriteDone frees room;
// - no read starts once an error is set or the call is finishing; a read
//   that completes then is dropped, never handled;
// - Finish is decided once, when nothing is accepted-unanswered, nothing is
//   queued or being written, no StartRead is being issued, and reading is
//   over (client half-closed) or an error is set.
// Delivery: each reply queued and the final status hold one of the service's
// unsent count (HoldUnsent before the hand-off) until the write completes (or
// fails) and until OnDone, so the drain waits for delivery, not hand-off.
// Lifetime: OnDone drops one reference and every message in flight holds
// one, so a batch thread answering a message never touches a deleted reactor;
// the batcher sees cancellation only through the shared flag.
// Nothing here allocates under mu_ or lets an exception escape a reaction.
class AttentionService::StreamCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(AttentionService* service, grpc::CallbackServerContext* context)
      : service_(service),
        cancelled_(std::make_shared<std::atomic<bool>>(false)),
        call_{service->DeadlineMicros(context), cancelled_,
              [this](uint64_t bytes) { Admitted(bytes); }},
        window_(service->options_.stream_window),
        window_bytes_(service->options_.stream_window_bytes) {
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
    Ref();
    const UnrefOnExit reaction{this};  // held while this reaction runs
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
      // Two words of captures: std::function keeps them inline (no
      // allocation). Handle never throws and calls the callback once.
      service_->Handle(incoming_, call_,
                       [this, index](Reply& reply) { MessageDone(reply, index); });
    }
    incoming_.Clear();
    Act(Update([](StreamCall* s) { s->reading_ = false; }));
  }

  void OnWriteDone(bool ok) override {
    int64_t ended = 0;  // replies whose delivery is over, written or not
    Act(Update([ok, &ended](StreamCall* s) {
      s->held_bytes_ -= s->writes_.front().size;
      s->writes_.pop_front();
      s->writing_ = false;
      ended = 1;
      if (!ok) {  // the client is gone: nothing more can be written or read
        s->broken_ = true;
        s->reads_done_ = true;
        for (const Outgoing& w : s->writes_) s->held_bytes_ -= w.size;
        ended += static_cast<int64_t>(s->writes_.size());
        s->writes_.clear();
      }
    }));
    service_->ReleaseUnsent(ended);
  }

  void OnCancel() override {
    cancelled_->store(true);
    ATTN_HAPPENS_BEFORE(this);  // OnDone comes after (happens_before.h)
  }

  void OnDone() override {
    ATTN_HAPPENS_AFTER(this);
    bool finished = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished = finishing_;
    }
    if (finished) service_->ReleaseUnsent(1);  // the status Act handed to Finish
    Unref();
  }

 private:
  // A serialized reply waiting to be written, and the bytes it is charged.
  struct Outgoing {
    grpc::ByteBuffer bytes;
    uint64_t size = 0;
  };
  struct Action {
    const grpc::ByteBuffer* write = nullptr;  // StartWrite this
    bool read = false;                        // StartRead
    bool finish = false;                      // Finish with `status`, or
    bool client_gone = false;                 // with CANCELLED: a write failed
    grpc::Status status;
  };
  struct UnrefOnExit {
    StreamCall* call;
    ~UnrefOnExit() { call->Unref(); }
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
      a.write = &writes_.front().bytes;  // list elements stay put while others are added
    }
    if (!reading_ && !reads_done_ && !error_set_ &&
        unanswered_ + static_cast<int64_t>(writes_.size()) < window_ &&
        held_bytes_ < window_bytes_) {
      reading_ = true;
      ++starting_reads_;
      a.read = true;
    }
    if (!writing_ && writes_.empty() && unanswered_ == 0 && starting_reads_ == 0 &&
        (reads_done_ || error_set_)) {
      finishing_ = true;
      a.finish = true;
      a.client_gone = broken_;
      a.status = std::move(error_);  // moved, not copied: no allocation under mu_
    }
    return a;
  }

  // Performs the decided operations, outside the lock.
  void Act(Action a) {
    if (a.write != nullptr) StartWrite(a.write);
    if (a.read) {
      StartRead(&incoming_);
      // The read is issued: Finish may now be decided (the read then fails).
      Act(Update([](StreamCall* s) { --s->starting_reads_; }));
    }
    if (a.finish) {
      service_->HoldUnsent(1);  // released by OnDone
      Finish(a.client_gone ? ClientGone() : std::move(a.status));
    }
  }

  static grpc::Status ClientGone() noexcept {
    try {
      return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    } catch (...) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "");
    }
  }

  // CallInfo::on_admitted: a message's bytes while it is computed.
  void Admitted(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    held_bytes_ += bytes;
  }

  // The stream's final status for a failed message: its status, naming it.
  static grpc::Status MessageError(Reply& reply, int64_t index) noexcept {
    try {
      const absl::string_view id(reply.request_id.data(), reply.request_id.size());
      const std::string name =
          id.empty() ? absl::StrCat("message ", index) : absl::StrCat("request_id ", id);
      return grpc::Status(reply.status.error_code(),
                          absl::StrCat(name, ": ", reply.status.error_message()));
    } catch (...) {  // out of memory: the message's own status, unnamed
      return std::move(reply.status);
    }
  }

  // The answer to message `index` (Handle's callback, once per message).
  void MessageDone(Reply& reply, int64_t index) {
    const UnrefOnExit message{this};  // the message's reference
    std::list<Outgoing> queued;       // allocated here, spliced in under the lock
    grpc::Status error;
    if (reply.status.ok()) {
      try {
        queued.emplace_back();
        queued.back().bytes.Swap(&reply.bytes);
        queued.back().size = queued.back().bytes.Length();
      } catch (const std::bad_alloc&) {
        error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "out of memory queueing a reply; retry later");
      }
    } else {
      error = MessageError(reply, index);
    }
    const bool has_reply = !queued.empty();
    if (has_reply) service_->HoldUnsent(1);  // before a write could complete
    bool dropped = false;
    Act(Update([&](StreamCall* s) {
      --s->unanswered_;
      s->held_bytes_ -= reply.admitted_bytes;
      if (has_reply && s->broken_) {
        dropped = true;
      } else if (has_reply) {
        s->held_bytes_ += queued.front().size;
        s->writes_.splice(s->writes_.end(), queued);
      } else if (!s->error_set_) {
        s->error_set_ = true;
        s->error_ = std::move(error);
      }
    }));
    if (dropped) service_->ReleaseUnsent(1);
  }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  AttentionService* const service_;
  const std::shared_ptr<std::atomic<bool>> cancelled_;
  const CallInfo call_;
  const int64_t window_;
  const uint64_t window_bytes_;
  grpc::ByteBuffer incoming_;  // the read buffer; only touched by the read chain
  std::atomic<int> refs_{1};   // OnDone's, plus one per message in flight

  std::mutex mu_;
  // Replies waiting; the front is being written while writing_.
  std::list<Outgoing> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a read is outstanding
  // StartReads decided, not yet issued: a count, since a read decided in one
  // reaction may complete and the next be decided before the first returns.
  int starting_reads_ ABSL_GUARDED_BY(mu_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  int64_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;  // handed to Handle, not yet answered
  int64_t messages_ ABSL_GUARDED_BY(mu_) = 0;    // accepted so far
  // Bytes of the messages being computed (as admitted) and the replies waiting.
  uint64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool error_set_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status error_ ABSL_GUARDED_BY(mu_);
  bool broken_ ABSL_GUARDED_BY(mu_) = false;     // a write failed: the client is gone
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;  // Finish decided
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  return new StreamCall(this, context);
}

}  // namespace attnserve::server
