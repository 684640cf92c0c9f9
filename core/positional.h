// Positional encodings of docs/DESIGN.md as precomputed tables: sinusoidal (added
// to the input) and rotary (applied to q and k per head). Tables are plain
// values, immutable after construction and safe to share between threads.
#ifndef ATTNSERVE_CORE_POSITIONAL_H_
#define ATTNSERVE_CORE_POSITIONAL_H_

#include <cstdint>
#include <vector>

namespace attnserve::core {

// PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)),
// positions 0..max_length-1; returns max_length x d_model row-major, computed
// in double and rounded once.
std::vector<float> SinusoidalTable(uint32_t max_length, uint32_t d_model);

// Rotary position embedding with base 10000 and the half-split convention:
// dimension i < d_head/2 pairs with i + d_head/2, angle p * 10000^(-2i/d_head).
class RotaryTable {
 public:
  // REQUIRES: d_head is even.
  RotaryTable(uint32_t max_length, uint32_t d_head);

  // Rotates the d_head values at `x` (one head of q or k) for position `pos`:
  // from the table below max_length, computed the same way (in double,
  // rounded once) past it, where a session's positions go on.
  void Apply(float* x, uint64_t pos) const;

 private:
  uint32_t max_length_;
  uint32_t d_head_;
  uint32_t half_;
  std::vector<float> cos_, sin_;  // max_length x half_
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_POSITIONAL_H_
