#include "server/batcher.h"

#include <algorithm>
#include <exception>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// a + b for b >= 0, stopping at kNever instead of overflowing.
int64_t SaturatingAdd(int64_t a, int64_t b) { return a > kNever - b ? kNever : a + b; }

uint64_t Elapsed(int64_t from_us, int64_t to_us) {
  return to_us > from_us ? static_cast<uint64_t>(to_us - from_us) : 0;
}

absl::Status ValidateOptions(const BatcherOptions& options) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_size must be positive; was ", options.max_batch_size));
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens must be positive; was ", options.max_batch_tokens));
  }
  if (options.max_queue_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_size must be positive; was ", options.max_queue_size));
  }
  if (options.max_queue_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_bytes must be positive; was ", options.max_queue_bytes));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay_us must be >= 0; was ", options.max_queue_delay_us));
  }
  return absl::OkStatus();
}

// Calls `done` once. A throwing callback must not take the batch thread (and
// the process) down with it; there is nobody left to tell, so it is dropped.
void CallDone(BatchTask& task, absl::StatusOr<core::SequenceOutput> result,
              const BatchStats& stats) {
  try {
    task.done(std::move(result), stats);
  } catch (...) {
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Batcher>> Batcher::Create(const BatcherOptions& options,
                                                         BatchFunction run, Clock* clock,
                                                         BatcherHooks hooks,
                                                         TaskBytesFunction task_bytes) {
  if (absl::Status status = ValidateOptions(options); !status.ok()) return status;
  if (!run) return absl::InvalidArgumentError("run must be set; was empty");
  if (clock == nullptr) return absl::InvalidArgumentError("clock must be set; was null");
  if (!task_bytes) {
    task_bytes = [](const core::SequenceInput& input) {
      return uint64_t{input.data.size()} * sizeof(float);
    };
  }
  std::unique_ptr<Batcher> batcher(
      new Batcher(options, std::move(run), clock, std::move(hooks), std::move(task_bytes)));
  batcher->thread_ = std::thread(&Batcher::Loop, batcher.get());
  return batcher;
}

Batcher::Batcher(const BatcherOptions& options, BatchFunction run, Clock* clock, BatcherHooks hooks,
                 TaskBytesFunction task_bytes)
    : options_(options),
      run_(std::move(run)),
      clock_(clock),
      hooks_(std::move(hooks)),
      task_bytes_(std::move(task_bytes)) {}

Batcher::~Batcher() { Drain(); }

absl::Status Batcher::Submit(BatchTask task) {
  if (!task.done) return absl::InvalidArgumentError("task.done must be set; was empty");
  const uint64_t bytes = task_bytes_(task.input);
  if (bytes > options_.max_queue_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs ", bytes, " bytes (input, output and attention weights), more than the "
        "whole queue memory budget (max_queue_bytes ", options_.max_queue_bytes,
        "); send a shorter sequence or ask for fewer weights"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = AdmitLocked(bytes); !s.ok()) return s;
  }
  // Admitted and charged: only now allocate what the task needs.
  absl::Status prepared = CallPrepare(task);
  const uint32_t length = task.input.length;
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --preparing_;
    if (prepared.ok()) {
      try {  // strong guarantee: on bad_alloc the queue is unchanged
        // The clock is read under mu_ so enqueued_us never decreases along
        // the queue: the head is always the oldest request.
        queue_.push_back(Queued{std::move(task), clock_->NowMicros(), bytes});
        queued = true;
      } catch (const std::bad_alloc&) {
      }
    }
    if (queued) {
      queued_tokens_ += length;
    } else {
      held_bytes_ -= bytes;
    }
  }
  cv_.notify_all();  // queued, or the last preparing task gone (a drain may end)
  if (!prepared.ok()) return prepared;
  if (!queued) return absl::ResourceExhaustedError("out of memory queueing the request");
  return absl::OkStatus();
}

absl::Status Batcher::AdmitLocked(uint64_t bytes) {
  if (draining_) return absl::UnavailableError("server is draining");
  const size_t waiting = queue_.size() + preparing_;
  if (waiting >= options_.max_queue_size) {
    return absl::ResourceExhaustedError(absl::StrCat("queue full: ", waiting,
                                                     " requests waiting (max_queue_size ",
                                                     options_.max_queue_size, ")"));
  }
  if (held_bytes_ + bytes > options_.max_queue_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "queue memory budget full: requests waiting or running hold ", held_bytes_,
        " bytes and this one needs ", bytes, " (max_queue_bytes ", options_.max_queue_bytes,
        ")"));
  }
  held_bytes_ += bytes;
  ++preparing_;
  return absl::OkStatus();
}

void Batcher::StartDraining() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

void Batcher::Drain() {
  StartDraining();
  std::call_once(join_once_, [this] {
    if (thread_.joinable()) thread_.join();
  });
}

bool Batcher::WaitDrained(int64_t deadline_us) {
  StartDraining();
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (!loop_ended_ && clock_->NowMicros() < deadline_us) {
      clock_->WaitUntil(cv_, lock, deadline_us);
    }
    if (!loop_ended_) return false;
  }
  Drain();  // the thread has returned: joins at once
  return true;
}

size_t Batcher::queue_depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

uint64_t Batcher::held_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_bytes_;
}

void Batcher::Answer(Queued& queued, absl::StatusOr<core::SequenceOutput> result,
                     const BatchStats& stats) {
  CallDone(queued.task, std::move(result), stats);
  std::lock_guard<std::mutex> lock(mu_);
  held_bytes_ -= queued.bytes;
}

// The batch thread. Each pass decides under mu_ and acts without it.
void Batcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const int64_t now_us = clock_->NowMicros();
    if (ReadyLocked(now_us)) {
      // A batch: take it, then report and run it without the lock.
      std::vector<Queued> batch = TakeBatchLocked();
      const size_t depth = queue_.size();
      lock.unlock();
      ReportDepth(depth);
      RunBatch(std::move(batch), now_us);
      lock.lock();
    } else if (hooks_.on_queue_depth && queue_.size() != reported_depth_) {
      // Submit changed the depth since the last report.
      const size_t depth = queue_.size();
      lock.unlock();
      ReportDepth(depth);
      lock.lock();
    } else if (draining_ && queue_.empty() && preparing_ == 0) {
      // Everything accepted has been answered and nothing more can come.
      loop_ended_ = true;
      cv_.notify_all();  // WaitDrained
      return;
    } else {
      // Until Submit, Drain, or the oldest request's delay runs out.
      clock_->WaitUntil(cv_, lock, NextDeadlineLocked());
    }
  }
}

bool Batcher::FullLocked() const {
  // When every queued request fits (fewer than max_batch_size, fewer than
  // max_batch_tokens in all), the prefix can grow; otherwise it cannot take
  // the next request, or holds exactly the budget, or a lone request exceeds it.
  return queue_.size() >= options_.max_batch_size || queued_tokens_ >= options_.max_batch_tokens;
}

bool Batcher::ReadyLocked(int64_t now_us) const {
  if (queue_.empty()) return false;
  if (draining_ || FullLocked()) return true;
  return now_us >= SaturatingAdd(queue_.front().enqueued_us, options_.max_queue_delay_us);
}

int64_t Batcher::NextDeadlineLocked() const {
  if (queue_.empty()) return kNever;
  return SaturatingAdd(queue_.front().enqueued_us, options_.max_queue_delay_us);
}

std::vector<Batcher::Queued> Batcher::TakeBatchLocked() {
  std::vector<Queued> batch;
  uint64_t tokens = 0;
  // Strict FIFO: the head always goes; stop at the first request that does
  // not fit rather than skipping over it.
  while (!queue_.empty() && batch.size() < options_.max_batch_size) {
    const uint32_t length = queue_.front().task.input.length;
    if (!batch.empty() && tokens + length > options_.max_batch_tokens) break;
    tokens += length;
    queued_tokens_ -= length;
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return batch;
}

std::vector<Batcher::Queued> Batcher::DropUnwanted(std::vector<Queued> batch, int64_t start_us) {
  std::vector<Queued> live;
  live.reserve(batch.size());
  for (Queued& queued : batch) {
    BatchStats stats;
    stats.queue_us = Elapsed(queued.enqueued_us, start_us);
    if (queued.task.deadline_us <= start_us) {
      Answer(queued,
             absl::DeadlineExceededError(absl::StrCat("deadline passed while queued (waited ",
                                                      stats.queue_us, " us); not computed")),
             stats);
    } else if (queued.task.cancelled && queued.task.cancelled()) {
      Answer(queued,
             absl::CancelledError(absl::StrCat("request cancelled while queued (waited ",
                                               stats.queue_us, " us); not computed")),
             stats);
    } else {
      live.push_back(std::move(queued));
    }
  }
  return live;
}

void Batcher::RunBatch(std::vector<Queued> batch, int64_t start_us) {
  std::vector<Queued> live = DropUnwanted(std::move(batch), start_us);
  if (live.empty()) return;
  BatchStats stats;
  stats.batch_size = static_cast<uint32_t>(live.size());
  std::vector<core::SequenceInput> inputs;
  inputs.reserve(live.size());
  for (Queued& queued : live) {
    stats.batch_tokens += queued.task.input.length;
    inputs.push_back(std::move(queued.task.input));  // `done` does not need it
  }
  const int64_t compute_start_us = clock_->NowMicros();
  absl::StatusOr<std::vector<core::SequenceOutput>> outputs = CallRun(inputs);
  stats.compute_us = Elapsed(compute_start_us, clock_->NowMicros());
  if (outputs.ok() && outputs->size() != live.size()) {
    outputs = absl::InternalError(absl::StrCat("batch function returned ", outputs->size(),
                                               " outputs for ", live.size(), " inputs"));
  }
  // Every run is observed, failed or not: it took engine time all the same.
  if (hooks_.on_batch) {
    try {
      hooks_.on_batch(stats);
    } catch (...) {  // a metrics hook must not stop the batch thread
    }
  }
  for (size_t i = 0; i < live.size(); ++i) {
    stats.queue_us = Elapsed(live[i].enqueued_us, start_us);
    if (!outputs.ok()) {
      Answer(live[i], outputs.status(), stats);
    } else if (!(*outputs)[i].status.ok()) {  // this sequence alone failed
      Answer(live[i], (*outputs)[i].status, stats);
    } else {
      Answer(live[i], std::move((*outputs)[i]), stats);
    }
  }
}

absl::Status Batcher::CallPrepare(BatchTask& task) {
  if (!task.prepare) return absl::OkStatus();
  try {
    task.prepare(task.input);
    return absl::OkStatus();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "out of memory allocating the reply of an admitted request; retry later");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("preparing the request failed: ", e.what()));
  } catch (...) {
    return absl::InternalError("preparing the request failed: a non-standard exception");
  }
}

absl::StatusOr<std::vector<core::SequenceOutput>> Batcher::CallRun(
    std::span<const core::SequenceInput> inputs) {
  try {
    return run_(inputs);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("batch function threw: ", e.what()));
  } catch (...) {
    return absl::InternalError("batch function threw a non-standard exception");
  }
}

void Batcher::ReportDepth(size_t depth) {
  reported_depth_ = depth;
  if (!hooks_.on_queue_depth) return;
  try {
    hooks_.on_queue_depth(depth);
  } catch (...) {  // a metrics hook must not stop the batch thread
  }
}

}  // namespace attnserve::server
