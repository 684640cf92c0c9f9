// Clock: the time source of the server's batchers, injected so tests advance
// a FakeClock instead of sleeping. Both implementations are thread-safe.
#ifndef ATTNSERVE_SERVER_CLOCK_H_
#define ATTNSERVE_SERVER_CLOCK_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

namespace attnserve::server {

class Clock {
 public:
  virtual ~Clock() = default;

  // Monotonic microseconds; the epoch is arbitrary.
  virtual int64_t NowMicros() const = 0;

  // REQUIRES: `lock` holds the mutex that guards the waiter's state and is the
  // mutex every notifier of `cv` takes. Blocks until `cv` is notified or
  // NowMicros() >= deadline_us (may also return spuriously: callers loop).
  virtual void WaitUntil(std::condition_variable& cv,
                         std::unique_lock<std::mutex>& lock,
                         int64_t deadline_us) = 0;
};

// steady_clock.
class RealClock final : public Clock {
 public:
  int64_t NowMicros() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 int64_t deadline_us) override;
};

// Time stands still until Advance(). Waiters block until notified or until an
// Advance passes their deadline.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_us = 1'000'000) : now_us_(start_us) {}

  int64_t NowMicros() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 int64_t deadline_us) override;

  // Moves time forward and wakes every waiter (taking each waiter's mutex
  // first, so a waiter between its check and its wait cannot miss it).
  // REQUIRES: the caller holds none of the waiters' mutexes.
  void Advance(int64_t us);

  // Blocks until some thread is inside WaitUntil having entered it at the
  // current time: that thread has seen the latest Advance and decided to wait.
  void BlockUntilWaitingAtNow();

 private:
  struct Waiter {
    std::condition_variable* cv;
    std::mutex* mu;
    int64_t entered_at_us;
  };
  mutable std::mutex mu_;  // guards now_us_ and waiters_
  std::condition_variable waiters_changed_;
  int64_t now_us_;
  std::vector<Waiter> waiters_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_CLOCK_H_
