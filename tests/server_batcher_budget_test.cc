// The batcher's memory budget (BatcherOptions::max_queue_bytes): every task
// is charged task_bytes(input) from Submit until its `done` returns, queued
// or computing; a task that would take the charges past the budget, or that
// alone is larger than it, is refused with RESOURCE_EXHAUSTED naming the
// limit; answers of every kind (computed, expired, cancelled, failed) give
// the bytes back. Also: a sequence's own failure (SequenceOutput::status)
// reaches that task alone, and WaitDrained's deadline. FakeClock, no sleeps.
#include <future>
#include <string>
#include <thread>

#include "tests/batcher_util.h"

namespace attnserve::server::batcher_test {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kBytesPerToken = 100;
constexpr uint64_t kBudget = 1000;

TaskBytesFunction BytesByLength() {
  return [](const core::SequenceInput& input) { return input.length * kBytesPerToken; };
}

BatcherOptions BudgetOptions(uint32_t batch_size = 100) {
  BatcherOptions options = Options(batch_size, 1000, kLongDelay);
  options.max_queue_bytes = kBudget;
  return options;
}

TEST(BatcherBudgetTest, RefusesWhatWouldExceedTheBudgetAndFreesItOnAnswer) {
  Harness h(BudgetOptions(), {}, BytesByLength());
  h.SubmitNew(4);
  h.SubmitNew(5);
  EXPECT_EQ(h.batcher->held_bytes(), 900u);
  Request& refused = h.Add(2);
  const absl::Status status = h.batcher->Submit(refused.Task());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Message(status),
            "queue memory budget full: requests waiting or running hold 900 bytes and this one "
            "needs 200 (max_queue_bytes 1000)");
  h.SubmitNew(1);  // exactly fills the budget
  EXPECT_EQ(h.batcher->held_bytes(), kBudget);
  h.clock.Advance(kLongDelay);
  for (const Request& r : h.requests) {
    if (&r != &refused) r.ExpectComputed();
  }
  h.Settle();
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
  h.SubmitNew(2);  // room again
  EXPECT_EQ(h.batcher->held_bytes(), 200u);
  EXPECT_EQ(refused.calls(), 0);
}

TEST(BatcherBudgetTest, ARequestLargerThanTheWholeBudgetIsRefusedEvenWhenIdle) {
  Harness h(BudgetOptions(), {}, BytesByLength());
  Request& huge = h.Add(11);
  const absl::Status status = h.batcher->Submit(huge.Task());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(status), HasSubstr("request needs 1100 bytes"));
  EXPECT_THAT(Message(status), HasSubstr("more than the whole queue memory budget "
                                         "(max_queue_bytes 1000)"));
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
}

TEST(BatcherBudgetTest, TheRunningBatchStaysChargedUntilItsRepliesAreDone) {
  Harness h(BudgetOptions(/*batch_size=*/1), {}, BytesByLength());
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  h.run.SetBehavior([released](auto&) {
    released.wait_for(kBound);
    return absl::OkStatus();
  });
  h.SubmitNew(8);  // a full batch: computing, blocked
  Request& refused = h.Add(3);
  EXPECT_EQ(h.batcher->Submit(refused.Task()).code(), absl::StatusCode::kResourceExhausted);
  release.set_value();
  h.requests[0].ExpectComputed();
  h.Settle();
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
  h.SubmitNew(3);
  h.requests.back().ExpectComputed();
}

TEST(BatcherBudgetTest, ExpiredCancelledAndFailedTasksGiveTheirBytesBack) {
  Harness h(BudgetOptions(), {}, BytesByLength());
  const int64_t now = h.clock.NowMicros();
  Request& expired = h.Add(2);
  ASSERT_TRUE(h.batcher->Submit(expired.Task(now + 10)).ok());
  Request& cancelled = h.SubmitNew(3);
  cancelled.Cancel();
  h.clock.Advance(kLongDelay);
  expired.ExpectError(absl::StatusCode::kDeadlineExceeded, "deadline");
  cancelled.ExpectError(absl::StatusCode::kCancelled, "cancelled");
  h.Settle();
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
  h.run.SetBehavior([](auto&) { return absl::InternalError("engine broke"); });
  Request& failed = h.SubmitNew(4);
  h.clock.Advance(kLongDelay);
  failed.ExpectError(absl::StatusCode::kInternal, "engine broke");
  h.Settle();
  EXPECT_EQ(h.batcher->held_bytes(), 0u);
}

TEST(BatcherBudgetTest, ASequencesOwnFailureReachesThatTaskAlone) {
  Harness h(BudgetOptions());
  h.run.SetBehavior([](std::vector<core::SequenceOutput>& outputs) {
    outputs[1] = core::SequenceOutput();
    outputs[1].status = absl::ResourceExhaustedError("out of memory for this sequence");
    return absl::OkStatus();
  });
  for (int i = 0; i < 3; ++i) h.SubmitNew(1);
  h.clock.Advance(kLongDelay);
  h.requests[0].ExpectComputed();
  h.requests[1].ExpectError(absl::StatusCode::kResourceExhausted, "out of memory");
  h.requests[2].ExpectComputed();
}

TEST(BatcherBudgetTest, WaitDrainedGivesUpAtItsDeadlineWhileABatchIsStuck) {
  Harness h(Options(1, 1000, kLongDelay));
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  h.run.SetBehavior([released](auto&) {
    released.wait_for(kBound);
    return absl::OkStatus();
  });
  h.SubmitNew(1);  // computing, blocked
  const int64_t deadline = h.clock.NowMicros() + 500;
  std::future<bool> drained =
      std::async(std::launch::async, [&] { return h.batcher->WaitDrained(deadline); });
  h.clock.BlockUntilWaitingAtNow();  // WaitDrained waits (the batch thread is in the run)
  h.clock.Advance(499);
  h.clock.BlockUntilWaitingAtNow();
  EXPECT_EQ(drained.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  h.clock.Advance(1);
  ASSERT_EQ(drained.wait_for(kBound), std::future_status::ready);
  EXPECT_FALSE(drained.get());
  release.set_value();
  h.requests[0].ExpectComputed();
  EXPECT_TRUE(h.batcher->WaitDrained(kNoDeadline));  // the thread ends by itself now
}

TEST(BatcherBudgetTest, ZeroBudgetIsRejected) {
  BatcherOptions options = Options(1, 1);
  options.max_queue_bytes = 0;
  FakeClock clock;
  FakeRun run;
  auto batcher = Batcher::Create(options, run.Function(), &clock);
  EXPECT_EQ(batcher.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(batcher.status()), "max_queue_bytes must be positive; was 0");
}

}  // namespace
}  // namespace attnserve::server::batcher_test
