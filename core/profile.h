// Where the oneDNN engine's time goes, stage by stage, for the benchmarks'
// breakdown (bench/core_bench --breakdown) and for anyone asking why a shape
// runs below the roof. Off by default (OneDnnEngineOptions::profile); when on,
// it costs two clock reads per stage and per attention step.
#ifndef ATTNSERVE_CORE_PROFILE_H_
#define ATTNSERVE_CORE_PROFILE_H_

#include <chrono>
#include <cstdint>

namespace attnserve::core {

// Seconds summed over the Run calls since the engine was created or the
// profile last taken. The engine's stages run one after another, each on all
// threads, so their wall times add up to the Run's (`other` is what lies
// between them: planning, output allocation, locking). Inside the attention
// stage the threads work on different tasks at once, so its parts are
// thread-seconds: divide by the thread count for their share of the wall, and
// what remains of `attention` is load imbalance at the end of the stage.
struct EngineProfile {
  uint64_t runs = 0;
  double total = 0;           // wall: the whole Run
  double pack = 0;            // wall: packing the input, positional encoding
  double qkv_projection = 0;  // wall: x.W_qkv^T (and rotary, and bf16 rounding)
  double attention = 0;       // wall: the attention stage
  double out_projection = 0;  // wall: context.W_out^T (and bf16 rounding)
  double unpack = 0;          // wall: copying outputs out, pooling
  // Thread-seconds inside the attention stage:
  double scores = 0;       // scale.Q.K^T (or the additive relevance)
  double normalize = 0;    // masking, softmax or ReLU, bf16 rounding, rescaling
  double context = 0;      // P.V
  double weights_out = 0;  // copying weights out where not written in place
  int threads = 1;         // the engine's thread count

  double other() const {
    return total - pack - qkv_projection - attention - out_projection - unpack;
  }
};

// Adds the time since the last lap to a counter; does nothing when off.
class StageClock {
 public:
  using Clock = std::chrono::steady_clock;
  explicit StageClock(bool on) : on_(on) {
    if (on_) last_ = Clock::now();
  }
  void Lap(double& into) {
    if (!on_) return;
    const Clock::time_point now = Clock::now();
    into += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  bool on_;
  Clock::time_point last_;
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_PROFILE_H_
