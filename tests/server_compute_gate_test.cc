// ComputeGate, the one CPU budget of all models: passes never overlap, and
// waiting batches enter in the order they asked (first come, first served),
// so one model's batch thread cannot keep the engine from another's.
#include "server/compute_gate.h"

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace attnserve::server {
namespace {

constexpr auto kBound = std::chrono::seconds(10);

// Polls until `condition` holds or kBound passes.
template <typename F>
bool Eventually(F condition) {
  const auto deadline = std::chrono::steady_clock::now() + kBound;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST(ComputeGateTest, PassesNeverOverlap) {
  ComputeGate gate;
  std::atomic<int> inside{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        ComputeGate::Pass pass(gate);
        const int now = ++inside;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        --inside;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(most.load(), 1);
  EXPECT_EQ(gate.holders_and_waiters(), 0u);
}

TEST(ComputeGateTest, WaitersEnterInTheOrderTheyAsked) {
  ComputeGate gate;
  std::mutex order_mu;
  std::vector<int> order;
  auto first = std::make_unique<ComputeGate::Pass>(gate);  // held by the test
  std::vector<std::thread> waiters;
  for (int w = 1; w <= 3; ++w) {
    waiters.emplace_back([&, w] {
      ComputeGate::Pass pass(gate);
      std::lock_guard<std::mutex> lock(order_mu);
      order.push_back(w);
    });
    // Waiter w has its ticket before waiter w + 1 starts.
    ASSERT_TRUE(Eventually([&] { return gate.holders_and_waiters() == uint64_t(w) + 1; }));
  }
  first.reset();
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

}  // namespace
}  // namespace attnserve::server
