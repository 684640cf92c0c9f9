#include "server/clock.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace attnserve::server {
namespace {

// The longest single timed wait of RealClock. Longer deadlines are reached by
// the caller's loop (an early return is allowed by the contract); the cap keeps
// steady_clock's nanosecond arithmetic far from overflow.
constexpr int64_t kMaxTimedWaitUs = int64_t{3600} * 1'000'000;

}  // namespace

// ---- RealClock ----

int64_t RealClock::NowMicros() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void RealClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                          int64_t deadline_us) {
  if (deadline_us == std::numeric_limits<int64_t>::max()) {
    cv.wait(lock);
    return;
  }
  const int64_t now_us = NowMicros();
  if (now_us >= deadline_us) return;
  const int64_t wait_us = std::min(deadline_us - now_us, kMaxTimedWaitUs);
  cv.wait_for(lock, std::chrono::microseconds(wait_us));
}

// ---- FakeClock ----
//
// Lock order: a waiter's mutex, then mu_. mu_ is only held for bookkeeping,
// never while blocking on a waiter's cv or while taking a waiter's mutex.

int64_t FakeClock::NowMicros() const {
  std::lock_guard<std::mutex> guard(mu_);
  return now_us_;
}

void FakeClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                          int64_t deadline_us) {
  Waiter self{&cv, lock.mutex(), 0};
  {
    std::lock_guard<std::mutex> guard(mu_);
    if (now_us_ >= deadline_us) return;
    self.entered_at_us = now_us_;
    waiters_.push_back(self);
  }
  waiters_changed_.notify_all();
  // One wait only: the caller re-checks its condition and the clock. An
  // Advance after our registration takes lock.mutex() before notifying, so it
  // cannot slip in between the registration and this wait.
  cv.wait(lock);
  std::lock_guard<std::mutex> guard(mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(), [&](const Waiter& w) {
    return w.cv == self.cv && w.mu == self.mu && w.entered_at_us == self.entered_at_us;
  });
  if (it != waiters_.end()) waiters_.erase(it);
}

void FakeClock::Advance(int64_t us) {
  std::vector<Waiter> to_wake;
  {
    std::lock_guard<std::mutex> guard(mu_);
    now_us_ += us;
    to_wake = waiters_;
  }
  // A waiter's cv and mutex must outlive an Advance that may still wake it
  // (test code: advance and destroy from the same thread, or join first).
  for (const Waiter& w : to_wake) {
    std::lock_guard<std::mutex> waiter_guard(*w.mu);
    w.cv->notify_all();
  }
}

void FakeClock::BlockUntilWaitingAtNow() {
  std::unique_lock<std::mutex> lock(mu_);
  waiters_changed_.wait(lock, [this] {
    return std::any_of(waiters_.begin(), waiters_.end(),
                       [this](const Waiter& w) { return w.entered_at_us == now_us_; });
  });
}

}  // namespace attnserve::server
