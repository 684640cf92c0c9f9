// Tests of server/batcher.h against its contract. Time comes from a FakeClock
// the tests advance; the batch thread is synchronized with
// FakeClock::BlockUntilWaitingAtNow() and with futures set from `done`, never
// with sleeps (only the RealClock stress test uses real time).
#include "server/batcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr auto kBound = std::chrono::seconds(10);  // a bug fails, never hangs
constexpr int64_t kLongDelay = 1'000'000;
constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

std::string Message(const absl::Status& status) { return std::string(status.message()); }

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
    EXPECT_THAT(reply.result->output, ElementsAre(float(id_)));
  }
  void ExpectError(absl::StatusCode code, const std::string& substring) const {
    Reply reply = Get();
    EXPECT_EQ(reply.result.status().code(), code) << id_ << ": " << reply.result.status();
    EXPECT_THAT(Message(reply.result.status()), HasSubstr(substring));
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
        outputs.push_back({input.length, {input.data[0]}, {}});
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
  explicit Harness(BatcherOptions options, BatcherHooks hooks = {}) {
    batcher = Batcher::Create(options, run.Function(), &clock, std::move(hooks)).value();
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

BatcherOptions Options(uint32_t batch_size, uint32_t batch_tokens, int64_t delay_us = kLongDelay,
                       uint32_t queue_size = 1000) {
  return {.max_batch_size = batch_size,
          .max_batch_tokens = batch_tokens,
          .max_queue_delay_us = delay_us,
          .max_queue_size = queue_size};
}

void ExpectStats(const BatchStats& s, uint64_t queue_us, uint64_t compute_us, uint32_t size,
                 uint32_t tokens) {
  EXPECT_EQ(s.queue_us, queue_us);
  EXPECT_EQ(s.compute_us, compute_us);
  EXPECT_EQ(s.batch_size, size);
  EXPECT_EQ(s.batch_tokens, tokens);
}

// The contract's batches, by request index, when requests of `lengths`
// arrive in order and the clock stands still: `full` leave as the queue
// fills; `drained` leave once the delay has passed (or on Drain).
struct Plan {
  std::vector<std::vector<int>> full, drained;
};
Plan PlanBatches(const std::vector<uint32_t>& lengths, uint32_t batch_size, uint32_t batch_tokens) {
  Plan plan;
  std::deque<int> queue;
  uint64_t queued = 0;
  auto take = [&] {
    std::vector<int> batch;
    uint64_t tokens = 0;
    while (!queue.empty() && batch.size() < batch_size &&
           (batch.empty() || tokens + lengths[queue.front()] <= batch_tokens)) {
      tokens += lengths[queue.front()];
      batch.push_back(queue.front());
      queue.pop_front();
    }
    queued -= tokens;
    return batch;
  };
  for (int i = 0; i < int(lengths.size()); ++i) {
    queue.push_back(i);
    queued += lengths[i];
    while (queue.size() >= batch_size || queued >= batch_tokens) plan.full.push_back(take());
  }
  while (!queue.empty()) plan.drained.push_back(take());
  return plan;
}

TEST(BatcherTest, DispatchesWhenFullByTokens) {
  Harness h(Options(100, 10));
  h.SubmitNew(4);
  h.SubmitNew(4);
  h.Settle();
  EXPECT_EQ(h.run.batch_count(), 0u);  // 8 tokens: room left
  h.SubmitNew(3);                      // 11 > 10: [4, 4] is full
  h.requests[1].ExpectComputed();
  h.SubmitNew(5);
  h.SubmitNew(2);  // [3, 5, 2] = 10 exactly: full
  h.requests[4].ExpectComputed();
  h.Settle();
  EXPECT_THAT(h.run.ids(), ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3, 4)));
  EXPECT_EQ(h.batcher->queue_depth(), 0u);
}

// Random lengths against the plan, sweeping the limits: full batches (by
// requests or by tokens, an oversize request alone) leave without any clock
// advance and in strict FIFO order; the rest leave once the delay has passed.
TEST(BatcherTest, BatchesFollowThePlanAcrossOptions) {
  for (uint32_t seed = 0; seed < 4; ++seed) {
    for (uint32_t batch_size = 1; batch_size <= 5; ++batch_size) {
      for (uint32_t batch_tokens : {1u, 5u, 10u, 16u, 1000u}) {
        SCOPED_TRACE(testing::Message() << "seed " << seed << " batch_size " << batch_size
                                        << " batch_tokens " << batch_tokens);
        std::mt19937 rng(seed);
        std::vector<uint32_t> lengths(15);
        for (uint32_t& length : lengths) length = 1 + rng() % 12;
        const Plan plan = PlanBatches(lengths, batch_size, batch_tokens);
        Harness h(Options(batch_size, batch_tokens));
        for (uint32_t length : lengths) h.SubmitNew(length);
        for (const auto& batch : plan.full) {
          for (int id : batch) h.requests[id].ExpectComputed();  // time stands still
        }
        h.Settle();
        EXPECT_EQ(h.run.ids(), plan.full);
        for (const auto& batch : plan.drained) EXPECT_FALSE(h.requests[batch[0]].Answered());
        h.clock.Advance(kLongDelay);
        for (const Request& request : h.requests) request.ExpectComputed();
        std::vector<std::vector<int>> all = plan.full;
        all.insert(all.end(), plan.drained.begin(), plan.drained.end());
        EXPECT_EQ(h.run.ids(), all);
      }
    }
  }
}

TEST(BatcherTest, OversizeRunsAloneAndFifoNeverSkipsAhead) {
  Harness h(Options(8, 10));
  h.SubmitNew(20).ExpectComputed();  // over the budget: alone, at once
  for (uint32_t length : {3, 20, 6, 6, 1, 1}) h.SubmitNew(length);
  h.requests[3].ExpectComputed();
  h.Settle();
  // [3] and [6] leave alone: the next request does not fit, and the 1s behind
  // it may not jump ahead into their batch.
  EXPECT_THAT(h.run.ids(),
              ElementsAre(ElementsAre(0), ElementsAre(1), ElementsAre(2), ElementsAre(3)));
  EXPECT_FALSE(h.requests[4].Answered());
  h.clock.Advance(kLongDelay);
  h.requests[6].ExpectComputed();
  EXPECT_THAT(h.run.ids().back(), ElementsAre(4, 5, 6));
}

// The oldest request sets the time: a second one, queued halfway, leaves with it.
TEST(BatcherTest, DispatchesExactlyAtTheDelay) {
  for (int64_t delay : {1, 2, 7, 1000}) {
    SCOPED_TRACE(delay);
    Harness h(Options(100, 1000, delay));
    Request& first = h.SubmitNew(3);
    h.clock.Advance(delay / 2);
    Request& second = h.SubmitNew(1);
    h.clock.Advance(delay - delay / 2 - 1);
    h.clock.BlockUntilWaitingAtNow();
    EXPECT_EQ(h.run.batch_count(), 0u);
    EXPECT_FALSE(first.Answered());
    h.clock.Advance(1);
    first.ExpectComputed();
    second.ExpectComputed();
    EXPECT_THAT(h.run.ids(), ElementsAre(ElementsAre(0, 1)));
    EXPECT_EQ(first.Get().stats.queue_us, uint64_t(delay));
    EXPECT_EQ(second.Get().stats.queue_us, uint64_t(delay - delay / 2));
  }
  Harness zero(Options(100, 1000, 0));  // no delay: each request leaves at once
  for (int i = 0; i < 5; ++i) zero.SubmitNew(2).ExpectComputed();
}

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

// Stats of each reply and the hooks (on_batch before the replies; the queue
// depth reported from the batch thread, last when a batch was taken).
TEST(BatcherTest, StatsAndHooksDescribeTheBatches) {
  std::mutex mu;
  std::vector<BatchStats> batches;
  std::vector<size_t> depths;
  BatcherHooks hooks;
  hooks.on_batch = [&](const BatchStats& stats) {
    std::lock_guard<std::mutex> lock(mu);
    batches.push_back(stats);
  };
  hooks.on_queue_depth = [&](size_t depth) {
    std::lock_guard<std::mutex> lock(mu);
    depths.push_back(depth);
  };
  auto last_depth = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return depths.empty() ? size_t{999} : depths.back();
  };
  Harness h(Options(2, 1000, 1000), hooks);
  h.run.SetBehavior([&h](auto&) { return h.clock.Advance(50), absl::OkStatus(); });  // 50 us run
  Request& a = h.SubmitNew(3);
  h.clock.Advance(300);
  h.clock.BlockUntilWaitingAtNow();
  EXPECT_EQ(last_depth(), 1u);
  EXPECT_EQ(h.batcher->queue_depth(), 1u);
  Request& b = h.SubmitNew(5);  // full: the batch starts now
  ExpectStats(a.Get().stats, 300, 50, 2, 8);
  ExpectStats(b.Get().stats, 0, 50, 2, 8);
  EXPECT_EQ(last_depth(), 0u);
  Request& c = h.SubmitNew(4);  // alone, after the delay
  h.clock.Advance(1000);
  ExpectStats(c.Get().stats, 1000, 50, 1, 4);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(batches.size(), 2u);
  ExpectStats(batches[0], 0, 50, 2, 8);
  ExpectStats(batches[1], 0, 50, 1, 4);
  for (size_t depth : depths) EXPECT_LE(depth, 2u);
}

// Real time, real threads: every accepted request is answered exactly once,
// every rejected one never, no batch breaks the limits, and each producer's
// accepted requests run in the order it submitted them.
TEST(BatcherTest, StressWithRealClock) {
  constexpr int kProducers = 8, kPerProducer = 500;
  const BatcherOptions options = Options(8, 128, 200, 8);  // a small queue: some rejected
  RealClock clock;
  FakeRun run;
  std::deque<Request> requests;
  std::mt19937 rng(7);
  for (int i = 0; i < kProducers * kPerProducer; ++i) requests.emplace_back(i, 1 + rng() % 64);
  std::vector<std::atomic<bool>> accepted(requests.size());
  auto batcher = Batcher::Create(options, run.Function(), &clock).value();
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937 local(p);
      for (int i = p * kPerProducer; i < (p + 1) * kPerProducer; ++i) {
        const uint32_t roll = local() % 100;
        if (roll < 5) requests[i].Cancel();
        const int64_t deadline = roll < 15 ? clock.NowMicros() + local() % 300 : kNoDeadline;
        accepted[i] = batcher->Submit(requests[i].Task(deadline)).ok();
        // Load shaping only (not synchronization): a few microseconds apart.
        std::this_thread::sleep_for(std::chrono::microseconds(local() % 20));
      }
    });
  }
  for (std::thread& producer : producers) producer.join();
  batcher->Drain();
  size_t answered = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(requests[i].calls(), accepted[i] ? 1 : 0) << i;
    answered += accepted[i];
  }
  EXPECT_GT(answered, 0u);
  std::vector<int> last_run(kProducers, -1);
  for (const auto& batch : run.batches()) {
    uint64_t tokens = 0;
    for (const FakeRun::Seen& seen : batch) tokens += seen.length;
    EXPECT_LE(batch.size(), options.max_batch_size);
    EXPECT_TRUE(batch.size() == 1 || tokens <= options.max_batch_tokens) << tokens;
    for (const FakeRun::Seen& seen : batch) {
      EXPECT_GT(seen.id, last_run[seen.id / kPerProducer]);
      last_run[seen.id / kPerProducer] = seen.id;
      EXPECT_TRUE(accepted[seen.id]);
    }
  }
}

}  // namespace
}  // namespace attnserve::server
