#include "core/positional.h"

#include <cmath>

namespace attnserve::core {

std::vector<float> SinusoidalTable(uint32_t max_length, uint32_t d_model) {
  std::vector<float> table(size_t{max_length} * d_model);
  for (uint32_t p = 0; p < max_length; ++p) {
    for (uint32_t c = 0; c < d_model; ++c) {
      const uint32_t two_i = c & ~1u;  // the even index of the (sin, cos) pair
      const double angle = p / std::pow(10000.0, double(two_i) / d_model);
      table[size_t{p} * d_model + c] =
          static_cast<float>((c % 2 == 0) ? std::sin(angle) : std::cos(angle));
    }
  }
  return table;
}

RotaryTable::RotaryTable(uint32_t max_length, uint32_t d_head)
    : max_length_(max_length),
      d_head_(d_head),
      half_(d_head / 2),
      cos_(size_t{max_length} * half_),
      sin_(size_t{max_length} * half_) {
  for (uint32_t p = 0; p < max_length; ++p) {
    for (uint32_t i = 0; i < half_; ++i) {
      const double theta = std::pow(10000.0, -2.0 * i / d_head);
      cos_[size_t{p} * half_ + i] = static_cast<float>(std::cos(p * theta));
      sin_[size_t{p} * half_ + i] = static_cast<float>(std::sin(p * theta));
    }
  }
}

void RotaryTable::Apply(float* x, uint64_t pos) const {
  float* x2 = x + half_;
  if (pos >= max_length_) {
    for (uint32_t i = 0; i < half_; ++i) {
      const double theta = std::pow(10000.0, -2.0 * i / d_head_);
      const auto c = static_cast<float>(std::cos(double(pos) * theta));
      const auto s = static_cast<float>(std::sin(double(pos) * theta));
      const float a = x[i], b = x2[i];
      x[i] = a * c - b * s;
      x2[i] = b * c + a * s;
    }
    return;
  }
  const float* c = &cos_[size_t{pos} * half_];
  const float* s = &sin_[size_t{pos} * half_];
  for (uint32_t i = 0; i < half_; ++i) {
    const float a = x[i], b = x2[i];
    x[i] = a * c[i] - b * s[i];
    x2[i] = b * c[i] + a * s[i];
  }
}

}  // namespace attnserve::core
