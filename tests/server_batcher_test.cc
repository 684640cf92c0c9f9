// Tests of how server/batcher.h forms batches, against its contract: a batch
// leaves when full by requests or by tokens or when its oldest request has
// waited the delay, an oversize request runs alone, FIFO order is never
// skipped, and the stats and hooks describe each batch. Time comes from a
// FakeClock (tests/batcher_util.h); only the RealClock stress test uses real
// time. Admission, expiry, cancellation, drain and failures are in
// server_batcher_lifecycle_test.cc.
#include "server/batcher.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/batcher_util.h"

namespace attnserve::server::batcher_test {
namespace {

using ::testing::ElementsAre;

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
}  // namespace attnserve::server::batcher_test
