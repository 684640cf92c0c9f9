// Tests of server/clock.h: RealClock against steady_clock, FakeClock's
// Advance / WaitUntil / BlockUntilWaitingAtNow handshake.
#include "server/clock.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace attnserve::server {
namespace {

constexpr auto kBound = std::chrono::seconds(10);  // a bug fails, never hangs

// A thread that waits on `clock` until its deadline or until `stop` is set,
// the way the batcher does (loop around WaitUntil).
class Waiter {
 public:
  Waiter(Clock& clock, int64_t deadline_us) : clock_(clock), deadline_us_(deadline_us) {
    done_ = std::async(std::launch::async, [this] { Run(); });
  }
  ~Waiter() {
    Stop();
    done_.wait();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
  }
  bool Finished() { return done_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  bool WaitFinished() { return done_.wait_for(kBound) == std::future_status::ready; }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_ && clock_.NowMicros() < deadline_us_) clock_.WaitUntil(cv_, lock, deadline_us_);
  }

  Clock& clock_;
  const int64_t deadline_us_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::future<void> done_;
};

TEST(RealClockTest, IsMonotonicAndInMicroseconds) {
  RealClock clock;
  const int64_t a = clock.NowMicros();
  const auto steady_before = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // measuring, not syncing
  const int64_t b = clock.NowMicros();
  const auto steady_us = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::steady_clock::now() - steady_before)
                             .count();
  EXPECT_GE(b - a, 5000);
  EXPECT_LE(b - a, steady_us + 1000);
}

TEST(RealClockTest, PastDeadlineReturnsAtOnce) {
  RealClock clock;
  std::mutex mu;
  std::condition_variable cv;
  std::unique_lock<std::mutex> lock(mu);
  const int64_t before = clock.NowMicros();
  clock.WaitUntil(cv, lock, before - 1);
  clock.WaitUntil(cv, lock, std::numeric_limits<int64_t>::min());
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_LT(clock.NowMicros() - before, 1'000'000);
}

TEST(RealClockTest, WaitsUntilTheDeadline) {
  RealClock clock;
  const int64_t deadline = clock.NowMicros() + 3000;
  Waiter waiter(clock, deadline);
  ASSERT_TRUE(waiter.WaitFinished());
  EXPECT_GE(clock.NowMicros(), deadline);
}

TEST(RealClockTest, NotifyWakesAnIndefiniteWait) {
  RealClock clock;
  Waiter waiter(clock, std::numeric_limits<int64_t>::max());
  waiter.Stop();
  EXPECT_TRUE(waiter.WaitFinished());
}

TEST(RealClockTest, FarDeadlineStillWakesOnNotify) {
  RealClock clock;
  Waiter waiter(clock, std::numeric_limits<int64_t>::max() - 1);
  waiter.Stop();
  EXPECT_TRUE(waiter.WaitFinished());
}

TEST(FakeClockTest, StartsAtStartAndAdvances) {
  FakeClock clock(42);
  EXPECT_EQ(clock.NowMicros(), 42);
  clock.Advance(8);
  EXPECT_EQ(clock.NowMicros(), 50);
  clock.Advance(0);
  EXPECT_EQ(clock.NowMicros(), 50);
  EXPECT_EQ(FakeClock().NowMicros(), 1'000'000);
}

TEST(FakeClockTest, PastOrPresentDeadlineReturnsAtOnce) {
  FakeClock clock(100);
  std::mutex mu;
  std::condition_variable cv;
  std::unique_lock<std::mutex> lock(mu);
  clock.WaitUntil(cv, lock, 100);
  clock.WaitUntil(cv, lock, 99);
  EXPECT_TRUE(lock.owns_lock());
}

TEST(FakeClockTest, WaiterReturnsExactlyAtItsDeadline) {
  for (int64_t delay : {1, 2, 10, 1000}) {
    SCOPED_TRACE(delay);
    FakeClock clock;
    Waiter waiter(clock, clock.NowMicros() + delay);
    clock.BlockUntilWaitingAtNow();
    clock.Advance(delay - 1);
    clock.BlockUntilWaitingAtNow();  // woke, saw now < deadline, waits again
    EXPECT_FALSE(waiter.Finished());
    clock.Advance(1);
    EXPECT_TRUE(waiter.WaitFinished());
  }
}

TEST(FakeClockTest, NotifyWakesWithoutAdvance) {
  FakeClock clock;
  Waiter waiter(clock, std::numeric_limits<int64_t>::max());
  clock.BlockUntilWaitingAtNow();
  waiter.Stop();
  EXPECT_TRUE(waiter.WaitFinished());
  EXPECT_EQ(clock.NowMicros(), 1'000'000);
}

TEST(FakeClockTest, BlockUntilWaitingAtNowWaitsForALateWaiter) {
  FakeClock clock;
  auto blocked = std::async(std::launch::async, [&] { clock.BlockUntilWaitingAtNow(); });
  Waiter waiter(clock, clock.NowMicros() + 10);
  EXPECT_EQ(blocked.wait_for(kBound), std::future_status::ready);
  clock.Advance(10);
  EXPECT_TRUE(waiter.WaitFinished());
}

TEST(FakeClockTest, AdvanceWakesEveryWaiterWhoseDeadlinePassed) {
  FakeClock clock(0);
  std::vector<std::unique_ptr<Waiter>> waiters;
  for (int64_t deadline = 1; deadline <= 5; ++deadline) {
    waiters.push_back(std::make_unique<Waiter>(clock, deadline * 10));
  }
  for (int64_t step = 1; step <= 5; ++step) {
    clock.Advance(10);
    ASSERT_TRUE(waiters[step - 1]->WaitFinished()) << step;
    if (step < 5) {
      clock.BlockUntilWaitingAtNow();  // a later waiter has re-checked
      for (size_t later = step; later < waiters.size(); ++later) {
        EXPECT_FALSE(waiters[later]->Finished()) << step << " " << later;
      }
    }
  }
}

TEST(FakeClockTest, ManyAdvancesRaceWithManyWaiters) {
  FakeClock clock(0);
  constexpr int kWaiters = 8;
  std::vector<std::unique_ptr<Waiter>> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.push_back(std::make_unique<Waiter>(clock, 1000 + i));
  }
  for (int i = 0; i < 1000 + kWaiters; ++i) clock.Advance(1);
  for (auto& waiter : waiters) EXPECT_TRUE(waiter->WaitFinished());
}

}  // namespace
}  // namespace attnserve::server
