// Helpers shared by the batcher tests (server_batcher_test.cc,
// server_batcher_lifecycle_test.cc): requests that own their data and their
// reply, a fake batch function that records every batch, and a Harness of a
// Batcher on a FakeClock. Time comes from the FakeClock the tests advance; the
// batch thread is synchronized with FakeClock::BlockUntilWaitingAtNow() and
// with futures set from `done`, never with sleeps.
#ifndef ATTNSERVE_TESTS_BATCHER_UTIL_H_
#define ATTNSERVE_TESTS_BATCHER_UTIL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batcher.h"
#include "server/clock.h"

namespace attnserve::server::batcher_test {

inline constexpr auto kBound = std::chrono::seconds(10);  // a bug fails, never hangs
inline constexpr int64_t kLongDelay = 1'000'000;
inline constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

inline std::string Message(const absl::Status& status) { return std::string(status.message()); }

struct Reply {
  absl::StatusOr<core::SequenceOutput> result = absl::UnknownError("no reply within 10 s");
  BatchStats stats;
};

// One request: owns its data (d_model = 1, data[i] = id) and its reply. The
// fake run answers with rows = length and output = {id}, so a test can tell
// which reply went where.
class Request {
 public:
  Request(int id, uint32_t length)
      : id_(id),
        length_(length),
        data_(std::max<uint32_t>(length, 1), float(id)),
        future_(promise_.get_future().share()) {}

  BatchTask Task(int64_t deadline_us = kNoDeadline) {
    BatchTask task;
    task.input.data = data_;
    task.input.length = length_;
    task.deadline_us = deadline_us;
    task.cancelled = [this] { return cancelled_.load(); };
    task.done = [this](absl::StatusOr<core::SequenceOutput> result, const BatchStats& stats) {
      if (calls_.fetch_add(1) == 0) promise_.set_value(Reply{std::move(result), stats});
    };
    return task;
  }

  int id() const { return id_; }
  int calls() const { return calls_.load(); }
  void Cancel() { cancelled_ = true; }
  bool Answered() const {
    return future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }
  // The reply, waiting at most kBound for it.
  Reply Get() const {
    if (future_.wait_for(kBound) != std::future_status::ready) return Reply{};
    return future_.get();
  }
  // Expects an OK reply carrying this request's own output.
  void ExpectComputed() const {
    Reply reply = Get();
    ASSERT_TRUE(reply.result.ok()) << id_ << ": " << reply.result.status();
    EXPECT_EQ(reply.result->rows, length_);
    EXPECT_THAT(reply.result->output, ::testing::ElementsAre(float(id_)));
  }
  void ExpectError(absl::StatusCode code, const std::string& substring) const {
    Reply reply = Get();
    EXPECT_EQ(reply.result.status().code(), code) << id_ << ": " << reply.result.status();
    EXPECT_THAT(Message(reply.result.status()), ::testing::HasSubstr(substring));
  }

 private:
  const int id_;
  const uint32_t length_;
  const std::vector<float> data_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int> calls_{0};
  std::promise<Reply> promise_;
  std::shared_future<Reply> future_;
};

// The batch function of the tests: records every batch (ids and lengths, in
// order) and answers each sequence with {id}. `behavior`, when set, runs
// after the outputs are made and may fail, throw, drop outputs or move time.
class FakeRun {
 public:
  struct Seen {
    int id;
    uint32_t length;
  };
  using Behavior = std::function<absl::Status(std::vector<core::SequenceOutput>&)>;

  BatchFunction Function() {
    return [this](std::span<const core::SequenceInput> batch) { return Run(batch); };
  }
  void SetBehavior(Behavior behavior) {
    std::lock_guard<std::mutex> lock(mu_);
    behavior_ = std::move(behavior);
  }
  std::vector<std::vector<Seen>> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  std::vector<std::vector<int>> ids() const {  // the request ids of each batch
    std::vector<std::vector<int>> result;
    for (const auto& batch : batches()) {
      result.emplace_back();
      for (const Seen& seen : batch) result.back().push_back(seen.id);
    }
    return result;
  }
  size_t batch_count() const { return batches().size(); }

 private:
  absl::StatusOr<std::vector<core::SequenceOutput>> Run(
      std::span<const core::SequenceInput> batch) {
    Behavior behavior;
    std::vector<core::SequenceOutput> outputs;
    {
      std::lock_guard<std::mutex> lock(mu_);
      behavior = behavior_;
      batches_.emplace_back();
      for (const core::SequenceInput& input : batch) {
        batches_.back().push_back({int(input.data[0]), input.length});
        outputs.push_back({input.length, {input.data[0]}, {}, absl::OkStatus()});
      }
    }
    if (behavior) {
      if (absl::Status status = behavior(outputs); !status.ok()) return status;
    }
    return outputs;
  }

  mutable std::mutex mu_;
  Behavior behavior_;
  std::vector<std::vector<Seen>> batches_;
};

// A batcher on a FakeClock with its requests. Members are destroyed in
// reverse: the batcher drains first, while the requests and the run live.
struct Harness {
  explicit Harness(BatcherOptions options, BatcherHooks hooks = {},
                   TaskBytesFunction task_bytes = {}) {
    batcher = Batcher::Create(options, run.Function(), &clock, std::move(hooks),
                              std::move(task_bytes))
                  .value();
  }

  Request& Add(uint32_t length) {
    return requests.emplace_back(static_cast<int>(requests.size()), length);
  }
  Request& SubmitNew(uint32_t length, int64_t deadline_us = kNoDeadline) {
    Request& request = Add(length);
    EXPECT_TRUE(batcher->Submit(request.Task(deadline_us)).ok()) << request.id();
    return request;
  }
  // Moves time by 1 us and waits until the batch thread has looked at the
  // queue at the new time: everything submitted before is seen, and every
  // batch it decided on has run.
  void Settle() {
    clock.Advance(1);
    clock.BlockUntilWaitingAtNow();
  }

  FakeClock clock;
  FakeRun run;
  std::deque<Request> requests;  // stable addresses
  std::unique_ptr<Batcher> batcher;
};

inline BatcherOptions Options(uint32_t batch_size, uint32_t batch_tokens,
                              int64_t delay_us = kLongDelay, uint32_t queue_size = 1000) {
  return {.max_batch_size = batch_size,
          .max_batch_tokens = batch_tokens,
          .max_queue_delay_us = delay_us,
          .max_queue_size = queue_size};
}

inline void ExpectStats(const BatchStats& s, uint64_t queue_us, uint64_t compute_us, uint32_t size,
                        uint32_t tokens) {
  EXPECT_EQ(s.queue_us, queue_us);
  EXPECT_EQ(s.compute_us, compute_us);
  EXPECT_EQ(s.batch_size, size);
  EXPECT_EQ(s.batch_tokens, tokens);
}

}  // namespace attnserve::server::batcher_test

#endif  // ATTNSERVE_TESTS_BATCHER_UTIL_H_
