// AttentionPlan: how a batch of sequences is packed end to end (token offsets)
// and split into attention tasks (one sequence, a block of query rows, the
// range of keys those rows may see), with each mask turned into per-row key
// ranges plus a sorted edge list. Pure data, built once per batch by one
// thread and then only read; safe to read from many threads.
#ifndef ATTNSERVE_CORE_ATTENTION_PLAN_H_
#define ATTNSERVE_CORE_ATTENTION_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/engine.h"

namespace attnserve::core {

struct SequencePlan {
  const SequenceInput* input = nullptr;
  size_t offset = 0;  // row of the first token in the packed buffers
  uint32_t length = 0;
  // Graph edges as CSR, each row's keys sorted and unique; both empty when the
  // mask has no edges (every key in the row's range is then allowed).
  std::vector<uint32_t> edge_offsets;  // length + 1
  std::vector<uint32_t> edge_keys;

  // Keys [KeyBegin(i), KeyEnd(i)) are the ones causal and window allow for
  // query i; never empty (i itself is always in range). Both are
  // non-decreasing in i.
  uint32_t KeyBegin(uint32_t i) const;
  uint32_t KeyEnd(uint32_t i) const;
};

struct AttentionTask {
  uint32_t seq = 0;                     // index into AttentionPlan::seqs
  uint32_t row_begin = 0, row_end = 0;  // query rows within the sequence
  uint32_t key_begin = 0, key_end = 0;  // union of their key ranges
};

struct AttentionPlan {
  std::vector<SequencePlan> seqs;
  std::vector<AttentionTask> tasks;  // most expensive first
  size_t total_tokens = 0;
  size_t max_block_floats = 0;  // largest rows x keys of any task
};

// REQUIRES: every sequence passed ValidateSequence. Query rows are split in
// blocks of at most `max_rows` rows, fewer for long sequences so that a
// block's scores (rows x keys) stay within `block_floats` where possible.
AttentionPlan MakeAttentionPlan(std::span<const SequenceInput> batch,
                                size_t block_floats, uint32_t max_rows,
                                uint32_t min_rows);

// Masks one score row of query `i`: `row` holds the scores of keys
// [key_begin, key_begin + width); entries the mask forbids become -inf.
// Returns how many keys remain allowed. `scratch` holds at least `width`
// floats.
uint32_t MaskRow(const SequencePlan& seq, uint32_t i, uint32_t key_begin,
                 float* row, uint32_t width, float* scratch);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ATTENTION_PLAN_H_
