// Vectorized row kernels of the oneDNN engine: masked softmax and ReLU
// normalization of score rows (whole rows, or tile by tile with running
// statistics), additive (tanh) relevance scores and bf16 conversion. Pure
// functions on caller-owned buffers; safe to call from any number of threads.
// The translation unit is compiled for several instruction sets
// (target_clones), so one binary runs on any x86-64 and uses AVX-512 where
// the CPU has it.
#ifndef ATTNSERVE_CORE_KERNELS_H_
#define ATTNSERVE_CORE_KERNELS_H_

#include <cstddef>
#include <cstdint>

namespace attnserve::core::kernels {

// In place over row[0..n): entries equal to -inf are masked. Computes the
// softmax of the unmasked entries (masked ones become exactly 0). A row with
// no unmasked entry becomes all zeros. Returns false for such a row.
bool SoftmaxRow(float* row, size_t n);

// In place over row[0..n): w = max(s, 0) / allowed for unmasked entries
// (masked entries are -inf and become 0). `allowed` is the number of unmasked
// entries; 0 zeroes the row.
void ReluNormalizeRow(float* row, size_t n, uint32_t allowed);

// One tile of a row of an online (streaming) softmax. In place over
// row[0..n) (masked entries are -inf): with m = max(*running_max, max of the
// row), writes exp(s - m) and adds their sum to *running_sum after scaling
// it by exp(*running_max - m); sets *running_max = m. Returns that scale
// factor, by which the caller rescales what it accumulated with the old
// maximum (0 when nothing was accumulated yet, 1 when the maximum did not
// change). A tile with no unmasked entry (and no running maximum) becomes
// zeros and returns 1. Start a row with *running_max = -inf, *running_sum = 0;
// its weights are the exps divided by the final *running_sum.
float OnlineSoftmaxRow(float* row, size_t n, float* running_max, float* running_sum);

// In place over row[0..n): w = max(s, 0), masked (-inf) entries 0: the
// numerator of ReLU normalization, for a tile of a row whose count of allowed
// keys is only known at the end.
void ReluRow(float* row, size_t n);

// dst[i] = bf16(src[i]), rounded to nearest even, for i < n. Finite inputs.
void ToBf16(const float* src, uint16_t* dst, size_t n);
// dst[i] = float(src[i]) for i < n (exact).
void FromBf16(const uint16_t* src, float* dst, size_t n);

// scores[j] = sum_d v[d] * tanh(q[d] + keys[j * key_stride + d]) for j < n:
// additive relevance of one query against n keys of width d_head.
void AdditiveScores(const float* q, const float* keys, size_t key_stride,
                    const float* v, uint32_t d_head, size_t n, float* scores);

// exp(x) to about 2 ulp for x in [-87, 88]; 0 below, +large above. Exposed for
// tests.
float Exp(float x);

}  // namespace attnserve::core::kernels

#endif  // ATTNSERVE_CORE_KERNELS_H_
