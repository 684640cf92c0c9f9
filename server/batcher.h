// Batcher: the dynamic batcher of one model. Requests wait in a FIFO queue;
// a batch is dispatched to the engine as soon as it is full (by requests or
// by tokens) or when its oldest request has waited max_queue_delay_us.
// Sequences of different lengths, masks and weights modes share a batch.
// Thread-safe: Submit may be called from any number of threads.
//
// Contract:
// - Submit never blocks on computation. It returns OK (the
//   task is accepted and its `done` will be called exactly once, from the
//   batch thread), RESOURCE_EXHAUSTED (queue full, the memory budget below
//   full, or `prepare` out of memory) or UNAVAILABLE (draining); on an error
//   `done` is never called and the caller still owns the reply. It throws
//   only std::bad_alloc (building an error message), and then leaves no trace:
//   nothing queued, nothing charged.
// - Admission comes first: the task's `prepare` (which allocates its reply)
//   runs only once the queue and memory budgets have admitted it, so a
//   refused request never allocates its reply.
// - Memory bound: every task is charged task_bytes(input) (the service's
//   function: input, reply output and the attention weights it asks for)
//   from Submit until its `done` returns; the charges of all tasks never
//   exceed max_queue_bytes. A task that alone is larger than max_queue_bytes
//   is refused (RESOURCE_EXHAUSTED naming the limit) even when the queue is
//   empty: admitting it would break the bound the operator set.
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
  // Most bytes held by the tasks accepted and not yet answered (queued or in
  // the running batch), as charged by the task_bytes function. Must be >= 1.
  // Beyond it, Submit fails with RESOURCE_EXHAUSTED.
  uint64_t max_queue_bytes = uint64_t{1} << 30;
};

// The bytes one task holds while accepted; see Batcher::Create.
using TaskBytesFunction = std::function<uint64_t(const core::SequenceInput&)>;

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
  // Optional; called once by Submit after the task has been admitted (queue
  // and memory budgets) and before it is queued, without the batcher's lock:
  // allocates what only an admitted task needs (the service's reply buffer,
  // input.output_buffer). If it throws, the task is not queued and Submit
  // returns RESOURCE_EXHAUSTED (std::bad_alloc) or INTERNAL (anything else).
  std::function<void(core::SequenceInput&)> prepare;
  // Called exactly once, from the batch thread, with the output or an error
  // (DEADLINE_EXCEEDED, CANCELLED, the engine's error for the whole batch,
  // or this sequence's own SequenceOutput::status).
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
  // starts the batch thread. `clock` must outlive the batcher. `task_bytes`
  // charges each task against max_queue_bytes; empty = the input's bytes.
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const BatcherOptions& options,
                                                         BatchFunction run, Clock* clock,
                                                         BatcherHooks hooks = {},
                                                         TaskBytesFunction task_bytes = {});
  ~Batcher();  // Drain()s.

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  absl::Status Submit(BatchTask task);

  // Stops accepting and dispatches everything queued without waiting for the
  // delay. Does not block; accepted tasks are still answered.
  void StartDraining();

  // StartDraining, then blocks until every accepted task has been answered and
  // joins the batch thread. Idempotent.
  void Drain();

  // StartDraining, then waits until everything accepted has been answered and
  // the batch thread has ended (then joins it: true), or until clock time
  // `deadline_us` (false; a batch is still running, e.g. a stuck engine, and
  // the destructor joins the thread).
  bool WaitDrained(int64_t deadline_us);

  size_t queue_depth() const;

  // Bytes charged to the tasks accepted and not yet answered.
  uint64_t held_bytes() const;

  // ---- Implementation details below. ----
 private:
  struct Queued {
    BatchTask task;
    int64_t enqueued_us;
    uint64_t bytes;  // charged against max_queue_bytes until `done` returns
  };

  Batcher(const BatcherOptions& options, BatchFunction run, Clock* clock, BatcherHooks hooks,
          TaskBytesFunction task_bytes);
  // Calls the task's `done` and then returns its bytes to the budget.
  void Answer(Queued& queued, absl::StatusOr<core::SequenceOutput> result,
              const BatchStats& stats);
  // REQUIRES: mu_ held. Checks draining and both budgets for a task of
  // `bytes`; on OK charges it and counts it as preparing.
  absl::Status AdmitLocked(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  // task.prepare (if any), with an exception turned into a status.
  static absl::Status CallPrepare(BatchTask& task);
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
  const TaskBytesFunction task_bytes_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // queue changed or draining
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // Tasks admitted and charged whose `prepare` runs now (outside mu_): they
  // count against max_queue_size, and the batch thread does not end while any
  // is left (it will be queued).
  uint32_t preparing_ ABSL_GUARDED_BY(mu_) = 0;
  bool loop_ended_ ABSL_GUARDED_BY(mu_) = false;  // the batch thread has returned

  // Batch thread only: the depth last given to hooks_.on_queue_depth. Depth is
  // reported from the batch thread alone so a gauge never goes back to a stale
  // value; changes made by Submit are reported when the thread next wakes.
  size_t reported_depth_ = 0;

  std::thread thread_;  // started by Create, joined by Drain
  std::once_flag join_once_;  // a second or concurrent Drain waits for the first
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_BATCHER_H_
