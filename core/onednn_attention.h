// OneDnnAttention: the attention stage of the oneDNN engine (internal to
// core/). Given the packed Q/K/V of a batch and its AttentionPlan, it runs
// every task on the engine's threads: scale * Q.K^T (oneDNN matmul; additive
// relevance by a kernel), mask, softmax or ReLU normalization, and P.V
// (oneDNN matmul) into the packed context, either over a task's whole key
// range or streamed in key tiles with running statistics. Every primitive is
// created once, in Create, with runtime shapes. Not thread-safe: one Run at a
// time (the engine serializes them); Run itself uses num_threads threads.
#ifndef ATTNSERVE_CORE_ONEDNN_ATTENTION_H_
#define ATTNSERVE_CORE_ONEDNN_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention_plan.h"
#include "core/model.h"
#include "core/profile.h"
#include "core/scratch.h"
#include "dnnl.hpp"

namespace attnserve::core {

// A matrix in caller memory: rows x cols with row stride `ld` (elements).
inline dnnl::memory::desc RowMajor(dnnl::memory::dim rows, dnnl::memory::dim cols,
                                   dnnl::memory::dim ld, dnnl::memory::data_type type) {
  return dnnl::memory::desc({rows, cols}, type, {ld, 1});
}

class OneDnnAttention {
 public:
  // `bf16`: Q, K, V and the normalized weights enter the matmuls as bf16
  // (f32 accumulation, f32 scores and context); only for dot relevance.
  // Errors: oneDNN has no implementation for the matmuls (e.g. bf16 on a CPU
  // without it: dnnl::error caught here) or only its slow reference one:
  // INTERNAL. `profile`: time each step (see TakeProfile).
  static absl::StatusOr<std::unique_ptr<OneDnnAttention>> Create(
      std::shared_ptr<const Model> model, const dnnl::engine& eng, bool bf16,
      int num_threads, bool profile = false);

  // Computes every task of `plan`. `qkv`: plan.total_tokens x 3d (q | k | v
  // per key row; a chunk's cached rows need only k and v), bf16 when created
  // with bf16 = true, else f32; `context`: plan.total_queries x d f32, every
  // row written. Weights go to outs[s].attention for sequences that ask for them
  // (pre-sized to queries x keys per matrix by the caller, contents unspecified: every
  // entry is written here; kMean is summed over heads by one task per row
  // block). Throws dnnl::error or std::bad_alloc on failure.
  void Run(const AttentionPlan& plan, const void* qkv, float* context,
           std::vector<SequenceOutput>& outs);

  // Adds the thread-seconds spent in each step since the last call to
  // `into` (scores, normalize, context, weights_out) and starts again from
  // zero. All zero unless created with profile = true.
  void TakeProfile(EngineProfile& into);

  // Frees per-thread scratch larger than `max_bytes`.
  void TrimScratch(size_t max_bytes);

  int primitives_created() const { return primitives_created_; }
  // Computes a ring-reading chunk's heads together (PlanOptions::
  // batch_ring_heads): dot relevance, where oneDNN has batched matmuls.
  bool batches_ring_heads() const { return batched_; }
  bool bf16() const { return bf16_; }
  // oneDNN's implementation names for the scores and context matmuls.
  std::string ImplInfo() const { return impl_info_; }

 private:
  // Per-thread state, reused across Run calls.
  struct ThreadState {
    dnnl::stream stream;
    ScratchBuffer scores;  // rows x tile f32 scores, then one row of masking scratch
    ScratchBuffer probs;   // rows x tile bf16 weights (bf16 only)
    ScratchBuffer stats;   // per-row running max, sum (or count), rescale
    EngineProfile times;   // the attention steps' thread-seconds, when profiling
  };

  OneDnnAttention() = default;
  void RunTask(const AttentionPlan& plan, const AttentionTask& task, const void* qkv,
               float* context, std::vector<SequenceOutput>& outs, ThreadState& ts);
  // The whole key range at once; writes the weights when asked.
  void AttendWhole(const SequencePlan& sp, const AttentionTask& task, uint32_t head,
                   const void* qkv, float* context, std::vector<SequenceOutput>& outs,
                   ThreadState& ts, StageClock& clock);
  // A ring-reading chunk's task of every head at once: key tiles (runs) with
  // a running normalization, each tile's scores and P.V one batched matmul
  // over the heads.
  void AttendRingBatched(const SequencePlan& sp, const AttentionTask& task, const void* qkv,
                         float* context, ThreadState& ts, StageClock& clock);
  // Key tiles with a running normalization (weights are never returned here).
  void AttendTiled(const SequencePlan& sp, const AttentionTask& task, uint32_t head,
                   const void* qkv, float* context, ThreadState& ts, StageClock& clock);
  // scores[rows x width] = relevance of the task's rows against keys
  // [key_begin, key_begin + width) for `head`.
  void Scores(const SequencePlan& sp, const AttentionTask& task, uint32_t head,
              const void* qkv, uint32_t key_begin, uint32_t width, float* scores,
              ThreadState& ts);
  // ctx (rows x d_head, row stride d_model) = (or +=, when `accumulate`)
  // probs[rows x width] . V[key_begin, key_begin + width) of `head`.
  void Context(const SequencePlan& sp, const AttentionTask& task, uint32_t head,
               const void* qkv, const void* probs, uint32_t key_begin, uint32_t width,
               float* ctx, bool accumulate, ThreadState& ts);
  // Where P.V reads the normalized weights of a rows x width block: the f32
  // scores themselves, or (bf16) `probs`, which FinishRow fills.
  const void* ProbsFor(float* scores, ThreadState& ts) const;
  // Row r of a normalized block is final: rounds it into the bf16 weights.
  void FinishRow(const float* row, uint32_t r, uint32_t width, ThreadState& ts) const;

  // --- Constant after Create. ---
  std::shared_ptr<const Model> model_;
  dnnl::engine eng_;
  bool bf16_ = false;
  int num_threads_ = 1;
  bool profile_ = false;
  dnnl::memory::data_type act_type_ = dnnl::memory::data_type::f32;
  size_t act_bytes_ = 4;  // bytes per Q/K/V/weight element
  dnnl::matmul scores_prim_;       // S = scale * Q K^T
  dnnl::matmul context_prim_;      // C = P V
  dnnl::matmul context_acc_prim_;  // C += P V (sum post-op)
  // The same three with K and V in a session's ring (rows k | v, stride 2d).
  dnnl::matmul scores_ring_prim_;
  dnnl::matmul context_ring_prim_;
  dnnl::matmul context_ring_acc_prim_;
  // Batched over the heads ([H, rows, keys] scores), for AttendRingBatched;
  // [0]: keys in the packed Q/K/V, [1]: in a ring. Only when batched_.
  bool batched_ = false;
  dnnl::matmul scores_heads_prim_[2];
  dnnl::matmul context_heads_prim_[2];
  dnnl::matmul context_heads_acc_prim_[2];
  std::string impl_info_;
  int primitives_created_ = 0;

  // --- Reused by Run (one Run at a time). ---
  std::vector<ThreadState> threads_;
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ONEDNN_ATTENTION_H_
