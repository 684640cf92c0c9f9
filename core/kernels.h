// Vectorized row kernels of the oneDNN engine: masked softmax and ReLU
// normalization of score rows, and additive (tanh) relevance scores. Pure
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

// scores[j] = sum_d v[d] * tanh(q[d] + keys[j * key_stride + d]) for j < n:
// additive relevance of one query against n keys of width d_head.
void AdditiveScores(const float* q, const float* keys, size_t key_stride,
                    const float* v, uint32_t d_head, size_t n, float* scores);

// exp(x) to about 2 ulp for x in [-87, 88]; 0 below, +large above. Exposed for
// tests.
float Exp(float x);

}  // namespace attnserve::core::kernels

#endif  // ATTNSERVE_CORE_KERNELS_H_
