// BatchTask::prepare (issue 11, review finding 2): the batcher admits a task
// (queue size, memory budget, draining) before the task allocates its reply,
// so a refused request never allocates one; prepare runs once, outside the
// lock, before the batch thread can see the task; a prepare that throws
// refuses the task and gives its bytes back; a drain waits for a task being
// prepared. FakeClock, no sleeps.
#include <atomic>
#include <future>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tests/batcher_util.h"

namespace attnserve::server::batcher_test {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kBytesPerToken = 100;

TaskBytesFunction BytesByLength() {
  return [](const core::SequenceInput& input) { return input.length * kBytesPerToken; };
}

// A task of `request` whose prepare counts its calls in *prepared and points
// the input at `replacement` (so the batch function's output shows whether it
// saw the prepared input).
BatchTask PreparedTask(Request& request, std::atomic<int>* prepared,
                       const std::vector<float>* replacement) {
  BatchTask task = request.Task();
  task.prepare = [prepared, replacement](core::SequenceInput& input) {
    ++*prepared;
    input.data = *replacement;
  };
  return task;
}

TEST(BatcherPrepareTest, OnlyAdmittedTasksArePreparedAndTheBatchSeesThePreparedInput) {
  BatcherOptions options = Options(100, 1000, kLongDelay, /*queue_size=*/3);
  options.max_queue_bytes = 1000;
  Harness h(options, {}, BytesByLength());
  const std::vector<float> prepared_data(8, 77.0f);
  std::atomic<int> prepared{0};
  Request& admitted = h.Add(8);
  ASSERT_TRUE(h.batcher->Submit(PreparedTask(admitted, &prepared, &prepared_data)).ok());
  EXPECT_EQ(prepared.load(), 1);

  std::atomic<int> refused_prepared{0};
  Request& over_budget = h.Add(3);  // 800 + 300 > 1000
  EXPECT_EQ(h.batcher->Submit(PreparedTask(over_budget, &refused_prepared, &prepared_data)).code(),
            absl::StatusCode::kResourceExhausted);
  Request& too_large = h.Add(11);  // alone over the budget
  EXPECT_EQ(h.batcher->Submit(PreparedTask(too_large, &refused_prepared, &prepared_data)).code(),
            absl::StatusCode::kResourceExhausted);
  h.SubmitNew(1);
  h.SubmitNew(1);  // the queue is full now (3)
  Request& queue_full = h.Add(1);
  const absl::Status full = h.batcher->Submit(PreparedTask(queue_full, &refused_prepared,
                                                           &prepared_data));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(full), HasSubstr("queue full"));
  EXPECT_EQ(refused_prepared.load(), 0) << "a refused task must not allocate its reply";
  EXPECT_EQ(h.batcher->held_bytes(), 1000u);

  h.clock.Advance(kLongDelay);
  const Reply reply = admitted.Get();
  ASSERT_TRUE(reply.result.ok()) << reply.result.status();
  EXPECT_THAT(reply.result->output, ::testing::ElementsAre(77.0f));  // the prepared input
  h.batcher->StartDraining();
  std::atomic<int> drained_prepared{0};
  Request& late = h.Add(1);
  EXPECT_EQ(h.batcher->Submit(PreparedTask(late, &drained_prepared, &prepared_data)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(drained_prepared.load(), 0);
  EXPECT_EQ(over_budget.calls() + too_large.calls() + queue_full.calls() + late.calls(), 0);
}

TEST(BatcherPrepareTest, AThrowingPrepareRefusesTheTaskAndGivesItsBytesBack) {
  BatcherOptions options = Options(100, 1000, kLongDelay);
  options.max_queue_bytes = 1000;
  Harness h(options, {}, BytesByLength());
  Request& oom = h.Add(5);
  BatchTask task = oom.Task();
  task.prepare = [](core::SequenceInput&) { throw std::bad_alloc(); };
  const absl::Status oom_status = h.batcher->Submit(std::move(task));
  EXPECT_EQ(oom_status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(oom_status), HasSubstr("out of memory allocating the reply"));
  Request& broken = h.Add(5);
  task = broken.Task();
  task.prepare = [](core::SequenceInput&) { throw std::runtime_error("no reply for you"); };
  const absl::Status broken_status = h.batcher->Submit(std::move(task));
  EXPECT_EQ(broken_status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(Message(broken_status), HasSubstr("no reply for you"));
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
  EXPECT_EQ(h.batcher->queue_depth(), 0u);
  Request& fine = h.SubmitNew(10);  // the whole budget is free again
  h.clock.Advance(kLongDelay);
  fine.ExpectComputed();
  h.Settle();
  EXPECT_EQ(oom.calls() + broken.calls(), 0);
  EXPECT_EQ(h.run.batch_count(), 1u);
}

TEST(BatcherPrepareTest, ADrainWaitsForATaskBeingPreparedAndAnswersIt) {
  Harness h(Options(100, 1000, kLongDelay));
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();
  Request& slow = h.Add(2);
  BatchTask task = slow.Task();
  task.prepare = [&entered, released](core::SequenceInput&) {
    entered.set_value();
    released.wait_for(kBound);
  };
  std::future<absl::Status> submitted =
      std::async(std::launch::async, [&] { return h.batcher->Submit(std::move(task)); });
  ASSERT_EQ(entered.get_future().wait_for(kBound), std::future_status::ready);
  // Admitted before the drain: it must still be queued and answered.
  h.batcher->StartDraining();
  release.set_value();
  ASSERT_EQ(submitted.wait_for(kBound), std::future_status::ready);
  EXPECT_TRUE(submitted.get().ok());
  slow.ExpectComputed();
  EXPECT_TRUE(h.batcher->WaitDrained(kNoDeadline));
}

}  // namespace
}  // namespace attnserve::server::batcher_test
