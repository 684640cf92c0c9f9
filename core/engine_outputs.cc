#include "core/engine_outputs.h"

#include <omp.h>

#include <algorithm>

namespace attnserve::core {

void AllocateOutputs(const ModelConfig& c, const SequenceInput& in, SequenceOutput& out) {
  const size_t L = in.length, keys = KeyCount(in);
  try {
    OutputRows(in, OutputRowCount(in), c.d_model, out);
    out.attention.resize(WeightsMatrixCount(c, in.weights));
    // Uninitialized (no zero-fill pass): the attention tasks write every
    // entry exactly once, and the first touch of the pages happens on all
    // threads (in the tasks, or for huge outputs in PrefaultLargeOutputs).
    for (WeightsMatrix& m : out.attention) m.resize(L * keys);
  } catch (...) {
    out = SequenceOutput();
    throw;
  }
}

// When the batch's large weights matrices (AllocatePages' huge-page sizes)
// total at least prefault_bytes, maps their pages before the attention writes
// them, on all threads: one store per 4 KiB. Left to the attention tasks, each
// page fault lands in the middle of a score matmul, and zeroing a fresh 2 MiB
// page evicts the block of scores the task is about to normalize and multiply
// from the core's L2. That only costs more than a separate pass once the
// weights far exceed the last-level cache (see OneDnnEngineOptions).
void PrefaultLargeOutputs(std::vector<SequenceOutput>& outs, size_t prefault_bytes,
                          int num_threads) {
  constexpr size_t kPageFloats = 4096 / sizeof(float);
  auto large = [](const WeightsMatrix& m) {
    return m.size() * sizeof(float) >= kHugePageThreshold;
  };
  size_t bytes = 0;
  for (const SequenceOutput& o : outs) {
    for (const WeightsMatrix& m : o.attention) bytes += large(m) ? m.size() * sizeof(float) : 0;
  }
  if (bytes == 0 || bytes < prefault_bytes) return;
  for (SequenceOutput& o : outs) {
    for (WeightsMatrix& m : o.attention) {  // each one is several MiB: one loop apiece
      if (!large(m)) continue;
      float* data = m.data();
#pragma omp parallel for num_threads(num_threads) schedule(static)
      for (size_t i = 0; i < m.size(); i += kPageFloats) data[i] = 0.0f;
    }
  }
}

// Unpacks the rows of y [T, d] into each sequence's output (the caller's
// buffer where given), pooling where asked. Memory-bound copies: spread over
// the threads once the batch has kParallelUnpackFloats output floats.
void UnpackOutputs(std::span<const SequenceInput> batch, const AttentionPlan& plan,
                   const float* y, size_t d, int num_threads, double* sums,
                   std::vector<SequenceOutput>& outs) {
  constexpr size_t kParallelUnpackFloats = size_t{1} << 16;  // 256 KiB
  auto rows_of = [](const SequenceInput& in, SequenceOutput& out) {  // sized: never allocates
    return in.output_buffer.empty() ? std::span<float>(out.output) : in.output_buffer;
  };
#pragma omp parallel for num_threads(num_threads) schedule(static) \
    if (plan.total_queries * d >= kParallelUnpackFloats)
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequencePlan& sp = plan.seqs[s];
    const float* rows = y + sp.out_offset * d;
    const std::span<float> dst = rows_of(batch[s], outs[s]);
    if (batch[s].pooling == Pooling::kNone) {
      std::copy_n(rows, size_t{sp.queries()} * d, dst.data());
    } else if (batch[s].pooling == Pooling::kFirst) {
      std::copy_n(rows, d, dst.data());
    } else {
      double* sum = sums + size_t(omp_get_thread_num()) * d;
      std::fill_n(sum, d, 0.0);
      for (uint32_t i = 0; i < sp.queries(); ++i) {
        for (size_t k = 0; k < d; ++k) sum[k] += rows[i * d + k];
      }
      for (size_t k = 0; k < d; ++k) dst[k] = static_cast<float>(sum[k] / sp.queries());
    }
  }
}

}  // namespace attnserve::core
