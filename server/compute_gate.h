// ComputeGate: the one CPU budget every model shares. Each model's batch
// thread passes through the gate around its engine run, so exactly one batch
// computes at a time, with all --threads threads, and batches of different
// models take turns in the order they asked (first come, first served).
// Thread-safe.
//
// Why serialize rather than split the threads: each engine run is an OpenMP
// team of --threads threads that keeps every core busy on its own (the
// projections are one GEMM over the batch, the attention tasks are spread
// dynamically). Two models computing at once would run 2 x --threads threads
// on --threads cores: OpenMP teams spin at their barriers, so oversubscribed
// teams slow each other down far more than taking turns does. A static split
// (--threads / models each) would leave cores idle whenever one model is idle.
// Taking turns is work-conserving and never oversubscribes; the price is that
// a long batch of one model delays the next batch of another by its compute
// time, as it would on a single-model server.
#ifndef ATTNSERVE_SERVER_COMPUTE_GATE_H_
#define ATTNSERVE_SERVER_COMPUTE_GATE_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace attnserve::server {

class ComputeGate {
 public:
  ComputeGate() = default;
  ComputeGate(const ComputeGate&) = delete;
  ComputeGate& operator=(const ComputeGate&) = delete;

  // Holds the gate for its lifetime: the constructor blocks until every
  // earlier holder has left.
  class Pass {
   public:
    explicit Pass(ComputeGate& gate);
    ~Pass();
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

   private:
    ComputeGate& gate_;
  };

  // Batches waiting for the gate or computing now (for tests).
  uint64_t holders_and_waiters() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable turn_changed_;
  // Ticket lock: a holder takes next_ticket_ and enters when now_serving_
  // reaches it; fair where a plain mutex would let the thread that just left
  // take it again ahead of another model's waiting batch.
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t now_serving_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_COMPUTE_GATE_H_
