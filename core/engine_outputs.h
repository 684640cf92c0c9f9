// The oneDNN engine's per-sequence outputs (internal to core/): sizing them
// before a batch computes (so that one sequence's allocation failure fails
// that sequence alone), mapping the pages of large weights up front, and
// unpacking the packed output rows into them. Called by the engine's one
// running batch; the parallel ones use `num_threads` OpenMP threads and
// allocate nothing inside their parallel regions.
#ifndef ATTNSERVE_CORE_ENGINE_OUTPUTS_H_
#define ATTNSERVE_CORE_ENGINE_OUTPUTS_H_

#include <cstddef>
#include <span>
#include <vector>

#include "core/attention_plan.h"
#include "core/engine.h"

namespace attnserve::core {

// Sizes `out` for `in`: the output rows (unless the caller gave a buffer)
// and the weights matrices of its mode, uninitialized. Throws
// std::bad_alloc, leaving `out` empty.
void AllocateOutputs(const ModelConfig& config, const SequenceInput& in, SequenceOutput& out);

// Touches the pages of the large weights matrices of `outs` on all threads
// when they total at least `prefault_bytes` (see the .cc for why).
void PrefaultLargeOutputs(std::vector<SequenceOutput>& outs, size_t prefault_bytes,
                          int num_threads);

// Copies each sequence's rows of `y` (plan.total_queries x d, packed as in
// `plan`) into its output, pooled where asked. `sums`: num_threads x d
// doubles of scratch. REQUIRES: `outs` sized by AllocateOutputs.
void UnpackOutputs(std::span<const SequenceInput> batch, const AttentionPlan& plan,
                   const float* y, size_t d, int num_threads, double* sums,
                   std::vector<SequenceOutput>& outs);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ENGINE_OUTPUTS_H_
