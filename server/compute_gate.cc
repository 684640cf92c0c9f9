#include "server/compute_gate.h"

namespace attnserve::server {

ComputeGate::Pass::Pass(ComputeGate& gate) : gate_(gate) {
  std::unique_lock<std::mutex> lock(gate_.mu_);
  const uint64_t ticket = gate_.next_ticket_++;
  gate_.turn_changed_.wait(lock, [&] { return gate_.now_serving_ == ticket; });
}

ComputeGate::Pass::~Pass() {
  {
    std::lock_guard<std::mutex> lock(gate_.mu_);
    ++gate_.now_serving_;
  }
  gate_.turn_changed_.notify_all();
}

uint64_t ComputeGate::holders_and_waiters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return next_ticket_ - now_serving_;
}

}  // namespace attnserve::server
