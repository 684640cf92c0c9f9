#include "core/attention_plan.h"

#include <algorithm>
#include <limits>

namespace attnserve::core {
namespace {

void BuildEdges(const Mask& mask, uint32_t length, SequencePlan& plan) {
  if (mask.edges.empty()) return;
  plan.edge_offsets.assign(length + 1, 0);
  for (size_t e = 0; e + 1 < mask.edges.size(); e += 2) ++plan.edge_offsets[mask.edges[e] + 1];
  for (uint32_t i = 0; i < length; ++i) plan.edge_offsets[i + 1] += plan.edge_offsets[i];
  plan.edge_keys.resize(mask.edges.size() / 2);
  std::vector<uint32_t> fill(plan.edge_offsets.begin(), plan.edge_offsets.end() - 1);
  for (size_t e = 0; e + 1 < mask.edges.size(); e += 2) {
    plan.edge_keys[fill[mask.edges[e]]++] = mask.edges[e + 1];
  }
  // Sort and deduplicate each row, then compact: a repeated edge counts once.
  uint32_t write = 0;
  for (uint32_t i = 0; i < length; ++i) {
    auto begin = plan.edge_keys.begin() + plan.edge_offsets[i];
    auto end = plan.edge_keys.begin() + plan.edge_offsets[i + 1];
    std::sort(begin, end);
    auto unique_end = std::unique(begin, end);
    plan.edge_offsets[i] = write;
    for (auto it = begin; it != unique_end; ++it) plan.edge_keys[write++] = *it;
  }
  plan.edge_offsets[length] = write;
  plan.edge_keys.resize(write);
}

}  // namespace

uint32_t SequencePlan::KeyBegin(uint32_t i) const {
  const uint32_t w = input->mask.window;
  return (w != 0 && i > w) ? i - w : 0;
}

uint32_t SequencePlan::KeyEnd(uint32_t i) const {
  uint32_t end = input->mask.causal ? i + 1 : length;
  const uint32_t w = input->mask.window;
  if (w != 0) end = std::min<uint64_t>(end, uint64_t{i} + w + 1);
  return end;
}

AttentionPlan MakeAttentionPlan(std::span<const SequenceInput> batch,
                                size_t block_floats, uint32_t max_rows,
                                uint32_t min_rows) {
  AttentionPlan plan;
  plan.seqs.resize(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    SequencePlan& sp = plan.seqs[s];
    sp.input = &batch[s];
    sp.offset = plan.total_tokens;
    sp.length = batch[s].length;
    plan.total_tokens += sp.length;
    BuildEdges(batch[s].mask, sp.length, sp);
    const uint32_t rows = static_cast<uint32_t>(std::clamp<size_t>(
        block_floats / sp.length, min_rows, max_rows));
    for (uint32_t r = 0; r < sp.length; r += rows) {
      AttentionTask task;
      task.seq = static_cast<uint32_t>(s);
      task.row_begin = r;
      task.row_end = std::min(sp.length, r + rows);
      task.key_begin = sp.KeyBegin(task.row_begin);
      task.key_end = sp.KeyEnd(task.row_end - 1);
      plan.tasks.push_back(task);
      plan.max_block_floats =
          std::max<size_t>(plan.max_block_floats, size_t{task.row_end - task.row_begin} *
                                                      (task.key_end - task.key_begin));
    }
  }
  // Longest first, so dynamic scheduling does not end on one big straggler.
  std::stable_sort(plan.tasks.begin(), plan.tasks.end(),
                   [](const AttentionTask& a, const AttentionTask& b) {
                     return size_t{a.row_end - a.row_begin} * (a.key_end - a.key_begin) >
                            size_t{b.row_end - b.row_begin} * (b.key_end - b.key_begin);
                   });
  return plan;
}

uint32_t MaskRow(const SequencePlan& seq, uint32_t i, uint32_t key_begin,
                 float* row, uint32_t width, float* scratch) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  // Range of keys causal/window allow, relative to the block.
  const uint32_t lo = seq.KeyBegin(i) - key_begin;
  const uint32_t hi = std::min(seq.KeyEnd(i) - key_begin, width);
  if (seq.edge_offsets.empty()) {
    std::fill(row, row + lo, kMasked);
    std::fill(row + hi, row + width, kMasked);
    return hi - lo;
  }
  std::fill(scratch, scratch + width, kMasked);
  uint32_t allowed = 0;
  for (uint32_t e = seq.edge_offsets[i]; e < seq.edge_offsets[i + 1]; ++e) {
    const uint32_t j = seq.edge_keys[e];
    if (j < lo + key_begin || j >= hi + key_begin) continue;
    scratch[j - key_begin] = row[j - key_begin];
    ++allowed;
  }
  std::copy(scratch, scratch + width, row);
  return allowed;
}

}  // namespace attnserve::core
