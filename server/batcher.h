// Batcher: the dynamic batcher of one model. Requests wait in a FIFO queue;
// a batch is dispatched to the engine as soon as it is full (by requests or
// by tokens) or when its oldest request has waited max_queue_delay_us.
// Sequences of different lengths, masks and weights modes share a batch.
// Thread-safe: Submit may be called from any number of threads.
//
// Contract:
// - Submit never blocks on computation. It returns OK (the task is accepted
//   and its `done` will be called exactly once, from the batch thread),
//   RESOURCE_EXHAUSTED (queue full) or UNAVAILABLE (draining); on an error
//   `done` is never called and the caller still owns the reply.
// - Latency bound: with an idle engine, a request waits at most
//   max_queue_delay_us before its batch starts.
// - A request whose deadline passes while queued gets DEADLINE_EXCEEDED and is
//   never computed; one whose `cancelled()` turns true before its batch forms
//   gets CANCELLED and is never computed.
// - A request with more tokens than max_batch_tokens runs alone.
// - Drain() (and the destructor) stop accepting, then dispatch everything
//   already accepted without waiting for the delay, then join the thread.
// The batcher knows nothing of gRPC or protobuf.
#ifndef ATTNSERVE_SERVER_BATCHER_H_
#define ATTNSERVE_SERVER_BATCHER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/engine.h"
#include "server/clock.h"

namespace attnserve::server {

struct BatcherOptions {
  // Most requests in one batch. Must be >= 1.
  uint32_t max_batch_size = 32;
  // Most tokens (sum of sequence lengths) in one batch. Must be >= 1. A
  // single request over this budget is dispatched alone.
  uint32_t max_batch_tokens = 8192;
  // Longest a request waits for companions before its batch is dispatched.
  // 0 = dispatch whatever is queued immediately.
  int64_t max_queue_delay_us = 0;
  // Most requests waiting (not yet in a batch). Must be >= 1. Beyond it,
  // Submit fails with RESOURCE_EXHAUSTED.
  uint32_t max_queue_size = 1024;
};

// What a request's batch looked like; sent back to the client as Stats.
struct BatchStats {
  uint64_t queue_us = 0;    // from Submit to the start of its batch
  uint64_t compute_us = 0;  // engine time of the whole batch
  uint32_t batch_size = 0;  // requests in the batch
  uint32_t batch_tokens = 0;
};

struct BatchTask {
  // The sequence; its data must stay valid until `done` is called.
  core::SequenceInput input;
  // Clock time after which the request is no longer wanted; max() = none.
  int64_t deadline_us = std::numeric_limits<int64_t>::max();
  // Optional; true once the caller no longer wants the reply.
  std::function<bool()> cancelled;
  // Called exactly once, from the batch thread, with the output or an error
  // (DEADLINE_EXCEEDED, CANCELLED, or the engine's error).
  std::function<void(absl::StatusOr<core::SequenceOutput>, const BatchStats&)> done;
};

// Runs one batch; the engine's Run in production, a fake in tests.
using BatchFunction = std::function<absl::StatusOr<std::vector<core::SequenceOutput>>(
    std::span<const core::SequenceInput>)>;

// Observation hooks for metrics; each optional, called from the batch thread
// without any lock held.
struct BatcherHooks {
  // After each engine run: size, tokens and compute time of the batch.
  std::function<void(const BatchStats&)> on_batch;
  // Whenever the number of waiting requests changes.
  std::function<void(size_t queue_depth)> on_queue_depth;
};

class Batcher {
 public:
  // Validates `options` (INVALID_ARGUMENT naming the field and its value) and
  // starts the batch thread. `clock` must outlive the batcher.
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const BatcherOptions& options,
                                                         BatchFunction run, Clock* clock,
                                                         BatcherHooks hooks = {});
  ~Batcher();  // Drain()s.

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  absl::Status Submit(BatchTask task);

  // Stops accepting and dispatches everything queued without waiting for the
  // delay. Does not block; accepted tasks are still answered.
  void BeginDrain();

  // BeginDrain, then blocks until every accepted task has been answered and
  // joins the batch thread. Idempotent.
  void Drain();

  size_t queue_depth() const;

  // ---- Implementation details below. ----
 private:
  struct Queued {
    BatchTask task;
    int64_t enqueued_us;
  };

  Batcher(const BatcherOptions& options, BatchFunction run, Clock* clock, BatcherHooks hooks);
  void Loop();
  // REQUIRES: mu_ held. True when the queue holds a full batch, or the oldest
  // request has waited long enough, or the batcher is draining.
  bool ReadyLocked(int64_t now_us) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // REQUIRES: mu_ held. Pops the next batch (FIFO prefix within the limits).
  std::vector<Queued> TakeBatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // REQUIRES: mu_ held. Full by requests, or by tokens (the queued prefix
  // cannot take its next request, or a lone request is over the budget).
  bool FullLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // REQUIRES: mu_ held. When the oldest request's delay runs out; max() when
  // the queue is empty.
  int64_t NextDeadlineLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunBatch(std::vector<Queued> batch, int64_t start_us);
  // Answers the expired and cancelled tasks of `batch`; returns the others.
  std::vector<Queued> DropUnwanted(std::vector<Queued> batch, int64_t start_us);
  // run_, with any exception turned into INTERNAL.
  absl::StatusOr<std::vector<core::SequenceOutput>> CallRun(
      std::span<const core::SequenceInput> inputs);
  // Calls the queue-depth hook (batch thread only).
  void ReportDepth(size_t depth);

  // Constant after construction.
  const BatcherOptions options_;
  const BatchFunction run_;
  Clock* const clock_;
  const BatcherHooks hooks_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // queue changed or draining
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;

  // Batch thread only: the depth last given to hooks_.on_queue_depth. Depth is
  // reported from the batch thread alone so a gauge never goes back to a stale
  // value; changes made by Submit are reported when the thread next wakes.
  size_t reported_depth_ = 0;

  std::thread thread_;  // started by Create, joined by Drain
  std::once_flag join_once_;  // a second or concurrent Drain waits for the first
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_BATCHER_H_
