// Tests of the life of a request in server/batcher.h, against its contract:
// admission (a full queue, bad options and tasks, a Submit that never waits
// for computation), deadline expiry and cancellation before compute, Drain and
// the destructor answering everything accepted, and run failures reaching
// every task of the batch. Time comes from a FakeClock (tests/batcher_util.h),
// never from sleeps. How batches are formed is in server_batcher_test.cc.
#include "server/batcher.h"

#include <future>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/batcher_util.h"

namespace attnserve::server::batcher_test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(BatcherTest, QueueFullIsResourceExhausted) {
  for (uint32_t queue_size = 1; queue_size <= 4; ++queue_size) {
    SCOPED_TRACE(queue_size);
    Harness h(Options(100, 1000, kLongDelay, queue_size));
    for (uint32_t i = 0; i < queue_size; ++i) h.SubmitNew(1);
    Request& rejected = h.Add(1);
    absl::Status status = h.batcher->Submit(rejected.Task());
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(Message(status), "queue full: " + std::to_string(queue_size) +
                                   " requests waiting (max_queue_size " +
                                   std::to_string(queue_size) + ")");
    // Once the queue has left in a batch, there is room again.
    h.clock.Advance(kLongDelay);
    h.requests[0].ExpectComputed();
    h.SubmitNew(1);
    h.batcher->Drain();
    for (const Request& request : h.requests)
      EXPECT_EQ(request.calls(), &request == &rejected ? 0 : 1);
  }
}

// Expired (deadline <= batch start) and cancelled requests are answered but
// never computed; a batch with nobody left does not run at all.
TEST(BatcherTest, ExpiredAndCancelledRequestsAreNeverComputed) {
  Harness h(Options(100, 1000, 1000));
  const int64_t t0 = h.clock.NowMicros();
  Request& expired = h.SubmitNew(1, t0 + 500);
  h.SubmitNew(1);
  h.SubmitNew(1, t0 + 1000).Cancel();  // cancelled, and expired at the batch start
  h.SubmitNew(1, t0 + 1001);
  h.SubmitNew(1).Cancel();
  h.clock.Advance(1000);
  expired.ExpectError(absl::StatusCode::kDeadlineExceeded,
                      "deadline passed while queued (waited 1000 us); not computed");
  h.requests[2].ExpectError(absl::StatusCode::kDeadlineExceeded, "not computed");
  h.requests[4].ExpectError(absl::StatusCode::kCancelled, "cancelled while queued");
  h.requests[1].ExpectComputed();
  h.requests[3].ExpectComputed();
  EXPECT_THAT(h.run.ids(), ElementsAre(ElementsAre(1, 3)));
  ExpectStats(expired.Get().stats, 1000, 0, 0, 0);
  h.SubmitNew(1).Cancel();
  h.clock.Advance(1000);
  h.requests[5].ExpectError(absl::StatusCode::kCancelled, "not computed");
  EXPECT_EQ(h.run.batch_count(), 1u);
}

TEST(BatcherTest, DrainAnswersEverythingAcceptedWithoutWaiting) {
  Harness h(Options(2, 1000));
  for (int i = 0; i < 5; ++i) h.SubmitNew(1);
  h.batcher->Drain();  // no clock advance: the delay is not waited for
  for (const Request& request : h.requests) request.ExpectComputed();
  EXPECT_THAT(h.run.ids(), ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3), ElementsAre(4)));
  Request& late = h.Add(1);
  absl::Status status = h.batcher->Submit(late.Task());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Message(status), "server is draining");
  h.batcher->Drain();  // idempotent
  EXPECT_EQ(late.calls(), 0);
}

TEST(BatcherTest, DestructorAndConcurrentDrainsAnswerEverything) {
  for (int drains : {0, 1, 4}) {  // 0: only the destructor drains
    SCOPED_TRACE(drains);
    Harness h(Options(3, 1000));
    for (int i = 0; i < 7; ++i) h.SubmitNew(1);
    std::vector<std::future<void>> running;
    for (int i = 0; i < drains; ++i) {
      running.push_back(std::async(std::launch::async, [&] { h.batcher->Drain(); }));
    }
    for (auto& drain : running) ASSERT_EQ(drain.wait_for(kBound), std::future_status::ready);
    h.batcher.reset();
    for (const Request& request : h.requests) EXPECT_EQ(request.calls(), 1);
  }
}

// Whatever goes wrong in the run reaches every task of the batch, and the
// batcher serves the next batch normally.
TEST(BatcherTest, RunFailureGoesToEveryTaskOfTheBatch) {
  struct Case {
    FakeRun::Behavior behavior;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](auto&) { return absl::InvalidArgumentError("bad sequence 1"); },
       absl::StatusCode::kInvalidArgument, "bad sequence 1"},
      {[](auto&) -> absl::Status { throw std::runtime_error("boom"); }, absl::StatusCode::kInternal,
       "batch function threw: boom"},
      {[](auto&) -> absl::Status { throw 42; }, absl::StatusCode::kInternal, "exception"},
      {[](auto& outputs) { return outputs.pop_back(), absl::OkStatus(); },
       absl::StatusCode::kInternal, "returned 2 outputs for 3 inputs"},
  };
  Harness h(Options(3, 1000));
  for (const Case& c : cases) {
    h.run.SetBehavior(c.behavior);
    for (int i = 0; i < 3; ++i) h.SubmitNew(1);
    for (size_t i = h.requests.size() - 3; i < h.requests.size(); ++i) {
      h.requests[i].ExpectError(c.code, c.message);
    }
    h.run.SetBehavior(nullptr);
    for (int i = 0; i < 3; ++i) h.SubmitNew(1);
    for (size_t i = h.requests.size() - 3; i < h.requests.size(); ++i) {
      h.requests[i].ExpectComputed();
    }
  }
}

TEST(BatcherTest, SubmitNeverWaitsForComputation) {
  Harness h(Options(1, 1000));
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  h.run.SetBehavior([released](auto&) {
    released.wait_for(kBound);
    return absl::OkStatus();
  });
  h.SubmitNew(1);  // its batch blocks in the run
  h.SubmitNew(1);
  h.SubmitNew(1);
  EXPECT_FALSE(h.requests[0].Answered());
  release.set_value();
  for (const Request& request : h.requests) request.ExpectComputed();
}

TEST(BatcherTest, RejectsBadOptionsAndTasks) {
  const std::vector<std::pair<BatcherOptions, std::string>> cases = {
      {Options(0, 1), "max_batch_size must be positive; was 0"},
      {Options(1, 0), "max_batch_tokens must be positive; was 0"},
      {Options(1, 1, 0, 0), "max_queue_size must be positive; was 0"},
      {Options(1, 1, -1), "max_queue_delay_us must be >= 0; was -1"},
  };
  FakeClock clock;
  FakeRun run;
  for (const auto& [options, message] : cases) {
    auto batcher = Batcher::Create(options, run.Function(), &clock);
    EXPECT_EQ(batcher.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_EQ(Message(batcher.status()), message);
  }
  auto no_run = Batcher::Create({}, nullptr, &clock);
  EXPECT_EQ(no_run.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(no_run.status()), HasSubstr("run"));
  auto no_clock = Batcher::Create({}, run.Function(), nullptr);
  EXPECT_EQ(no_clock.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(no_clock.status()), HasSubstr("clock"));
  auto minimal = Batcher::Create(Options(1, 1, 0, 1), run.Function(), &clock);
  ASSERT_TRUE(minimal.ok());
  BatchTask no_done;
  absl::Status status = (*minimal)->Submit(std::move(no_done));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("done"));
}

}  // namespace
}  // namespace attnserve::server::batcher_test
