#include "core/kernels.h"

#include <bit>
#include <cmath>
#include <limits>

// Each hot function is compiled three times and picked at load time by the
// CPU (GCC function multiversioning), so the default build stays portable.
#define ATTN_MULTIVERSION \
  __attribute__((target_clones("avx512f", "avx2", "default")))

namespace attnserve::core::kernels {
namespace {

// Cephes-style expf: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
// polynomial, 2^n built in the exponent bits. Branch-free so loops over it
// vectorize; inputs below -87.3 (including -inf) give exactly 0.
[[gnu::always_inline]] inline float ExpInline(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const bool underflow = x < -87.3f;
  // Ternaries, not std::fmin/fmax: those are libm calls that block vectorizing.
  const float lo = x < -87.3f ? -87.3f : x;
  const float xc = lo > 88.3f ? 88.3f : lo;
  const float n = std::floor(xc * kLog2e + 0.5f);
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return underflow ? 0.0f : e * scale;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): saturates to +-1 without overflow.
[[gnu::always_inline]] inline float TanhInline(float x) {
  return 1.0f - 2.0f / (ExpInline(2.0f * x) + 1.0f);
}

}  // namespace

float Exp(float x) { return ExpInline(x); }

// row[j] = exp(row[j] - max) (masked -inf entries become 0); returns their
// sum. Inlined into each multiversioned caller, so it gets the caller's ISA.
[[gnu::always_inline]] inline float ExpShiftSum(float* row, size_t n, float max) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t j = 0; j < n; ++j) {
    const float e = ExpInline(row[j] - max);  // -inf - max = -inf -> 0
    row[j] = e;
    sum += e;
  }
  return sum;
}

ATTN_MULTIVERSION bool SoftmaxRow(float* row, size_t n) {
  float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
  for (size_t j = 0; j < n; ++j) max = row[j] > max ? row[j] : max;
  if (max == -std::numeric_limits<float>::infinity()) {
    for (size_t j = 0; j < n; ++j) row[j] = 0.0f;
    return false;
  }
  const float sum = ExpShiftSum(row, n, max);
  const float inv = 1.0f / sum;  // sum >= 1: the max entry contributes exp(0)
#pragma omp simd
  for (size_t j = 0; j < n; ++j) row[j] *= inv;
  return true;
}

ATTN_MULTIVERSION void ReluNormalizeRow(float* row, size_t n, uint32_t allowed) {
  const float inv = allowed == 0 ? 0.0f : 1.0f / static_cast<float>(allowed);
#pragma omp simd
  for (size_t j = 0; j < n; ++j) row[j] = (row[j] > 0.0f ? row[j] : 0.0f) * inv;
}

ATTN_MULTIVERSION float OnlineSoftmaxRow(float* row, size_t n, float* running_max,
                                         float* running_sum) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float max = *running_max;
#pragma omp simd reduction(max : max)
  for (size_t j = 0; j < n; ++j) max = row[j] > max ? row[j] : max;
  if (max == kNegInf) {  // nothing allowed so far: no state to rescale
    for (size_t j = 0; j < n; ++j) row[j] = 0.0f;
    return 1.0f;
  }
  const float sum = ExpShiftSum(row, n, max);
  const float rescale = ExpInline(*running_max - max);  // -inf (first) -> 0
  *running_sum = *running_sum * rescale + sum;
  *running_max = max;
  return rescale;
}

ATTN_MULTIVERSION void ReluRow(float* row, size_t n) {
#pragma omp simd
  for (size_t j = 0; j < n; ++j) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
}

ATTN_MULTIVERSION void ToBf16(const float* src, uint16_t* dst, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = std::bit_cast<uint32_t>(src[i]);
    const uint32_t round = 0x7fffu + ((bits >> 16) & 1u);  // to nearest, ties to even
    dst[i] = static_cast<uint16_t>((bits + round) >> 16);
  }
}

ATTN_MULTIVERSION void FromBf16(const uint16_t* src, float* dst, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(uint32_t{src[i]} << 16);
}

ATTN_MULTIVERSION void AdditiveScores(const float* q, const float* keys,
                                      size_t key_stride, const float* v,
                                      uint32_t d_head, size_t n, float* scores) {
  for (size_t j = 0; j < n; ++j) {
    const float* k = keys + j * key_stride;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (uint32_t c = 0; c < d_head; ++c) s += v[c] * TanhInline(q[c] + k[c]);
    scores[j] = s;
  }
}

}  // namespace attnserve::core::kernels
