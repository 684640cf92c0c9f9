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

uint32_t SequencePlan::RunEnd(uint32_t key) const {
  if (ring == nullptr || key >= first_query) return length;
  const uint64_t slot = (FirstPosition() - first_query + key) % ring->capacity();
  return static_cast<uint32_t>(std::min<uint64_t>(first_query, key + (ring->capacity() - slot)));
}

size_t AttentionTask::TileFloats() const {
  return size_t{row_end - row_begin} * std::min(key_end - key_begin, key_tile);
}

namespace {

// Query rows per task for sequence `seq` (see MakeAttentionPlan).
uint32_t BlockRows(const SequenceInput& seq, uint32_t max_rows, const PlanOptions& options) {
  if (seq.weights == WeightsMode::kNone) return max_rows;
  // Returned weights need whole score rows: shrink the block instead.
  return static_cast<uint32_t>(
      std::clamp<size_t>(options.block_floats / KeyCount(seq), options.min_rows, max_rows));
}

// max_rows is not halved below this many rows: smaller blocks make matmul
// calls too small to pay for themselves (see PlanOptions::min_tasks).
constexpr uint32_t kMinHalvedRows = 64;

// A chunk whose heads are computed together (options.batch_ring_heads): it
// reads cached keys from its ring.
bool BatchedChunk(const SequenceInput& seq, const PlanOptions& options) {
  return options.batch_ring_heads && CachedKeyCount(seq) > 0 && seq.weights == WeightsMode::kNone;
}

// Query rows per task of a batched chunk: its rows split in `parts`, but not
// below min_rows (each task reads every cached key of every head).
uint32_t BatchedRows(const SequenceInput& seq, uint32_t max_rows, uint32_t parts,
                     const PlanOptions& options) {
  const uint32_t split = (seq.length + parts - 1) / parts;
  return std::min(max_rows, std::max(split, std::min(seq.length, options.min_rows)));
}

uint32_t ChooseMaxRows(std::span<const SequenceInput> batch, uint32_t num_heads,
                       uint32_t ring_parts, const PlanOptions& options) {
  uint32_t max_rows = options.max_rows;
  while (max_rows > kMinHalvedRows) {
    size_t tasks = 0;
    for (const SequenceInput& seq : batch) {
      if (BatchedChunk(seq, options)) {  // one task per row block, every head in it
        const uint32_t rows = BatchedRows(seq, max_rows, ring_parts, options);
        tasks += (seq.length + rows - 1) / rows;
        continue;
      }
      const uint32_t rows = BlockRows(seq, max_rows, options);
      const size_t heads = seq.weights == WeightsMode::kMean ? 1 : num_heads;
      tasks += (seq.length + rows - 1) / rows * heads;
    }
    if (tasks >= options.min_tasks) break;
    max_rows /= 2;
  }
  return max_rows;
}

}  // namespace

AttentionPlan MakeAttentionPlan(std::span<const SequenceInput> batch, uint32_t num_heads,
                                const PlanOptions& options) {
  // Chunks whose heads are computed together are one task per row block:
  // with fewer of them than threads, their rows are split so that every
  // thread gets one (a lone 16-row chunk: two tasks of 8 rows on 2 threads).
  size_t ring_chunks = 0;
  for (const SequenceInput& seq : batch) ring_chunks += BatchedChunk(seq, options);
  const size_t threads = std::max<size_t>(options.threads, 1);
  const uint32_t ring_parts =
      ring_chunks == 0 ? 1 : static_cast<uint32_t>((threads + ring_chunks - 1) / ring_chunks);
  const uint32_t max_rows = ChooseMaxRows(batch, num_heads, ring_parts, options);
  AttentionPlan plan;
  plan.seqs.resize(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    SequencePlan& sp = plan.seqs[s];
    sp.input = &batch[s];
    sp.offset = plan.total_tokens;
    sp.out_offset = plan.total_queries;
    sp.first_query = CachedKeyCount(batch[s]);
    sp.length = KeyCount(batch[s]);
    const bool weights = batch[s].weights != WeightsMode::kNone;
    if (sp.first_query > 0 && !weights) sp.ring = batch[s].cache;
    plan.total_tokens += sp.length - sp.packed_key0();
    plan.total_queries += batch[s].length;
    plan.has_cached_keys = plan.has_cached_keys || (sp.first_query > 0 && weights);
    BuildEdges(batch[s].mask, sp.length, sp);
    const bool batched = sp.ring != nullptr && options.batch_ring_heads;
    const uint32_t rows = batched ? BatchedRows(batch[s], max_rows, ring_parts, options)
                                  : BlockRows(batch[s], max_rows, options);
    // A batched task holds every head's scores: the budget counts them all.
    const size_t block_rows = size_t{rows} * (batched ? num_heads : 1);
    const bool fits = weights || block_rows * sp.length <= options.block_floats;
    const uint32_t key_tile =
        fits ? sp.length
        : batched
            ? static_cast<uint32_t>(std::min<size_t>(
                  options.key_tile, std::max<size_t>(options.block_floats / block_rows, 64)))
            : options.key_tile;
    // The mean over heads is summed in place by one task, a ring-reading
    // chunk's heads are computed together; anything else splits per head.
    const uint32_t heads_per_task =
        batch[s].weights == WeightsMode::kMean || batched ? num_heads : 1;
    const uint32_t block_heads = batched ? num_heads : 1;  // heads held at once
    for (uint32_t r = sp.first_query; r < sp.length; r += rows) {
      AttentionTask task;
      task.seq = static_cast<uint32_t>(s);
      task.row_begin = r;
      task.row_end = std::min(sp.length, r + rows);
      task.key_begin = sp.KeyBegin(task.row_begin);
      task.key_end = sp.KeyEnd(task.row_end - 1);
      task.key_tile = key_tile;
      task.ring = sp.ring != nullptr;
      plan.max_tile_floats = std::max(plan.max_tile_floats, task.TileFloats() * block_heads);
      plan.max_rows = std::max(plan.max_rows, (task.row_end - task.row_begin) * block_heads);
      for (uint32_t h = 0; h < num_heads; h += heads_per_task) {
        task.head_begin = h;
        task.head_end = h + heads_per_task;
        plan.tasks.push_back(task);
      }
    }
  }
  // Longest first, so dynamic scheduling does not end on one big straggler.
  auto cost = [](const AttentionTask& t) {
    return size_t{t.row_end - t.row_begin} * (t.key_end - t.key_begin) *
           (t.head_end - t.head_begin);
  };
  std::stable_sort(plan.tasks.begin(), plan.tasks.end(),
                   [&](const AttentionTask& a, const AttentionTask& b) {
                     return cost(a) > cost(b);
                   });
  return plan;
}

uint32_t MaskRow(const SequencePlan& seq, uint32_t i, uint32_t key_begin,
                 float* row, uint32_t width, float* scratch) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  // Range of keys causal/window allow, clamped to the window and made
  // relative to it (empty when the window lies outside the range).
  const uint32_t key_end = key_begin + width;
  const uint32_t lo = std::clamp(seq.KeyBegin(i), key_begin, key_end) - key_begin;
  const uint32_t hi = std::max(std::clamp(seq.KeyEnd(i), key_begin, key_end) - key_begin, lo);
  if (seq.edge_offsets.empty()) {
    std::fill(row, row + lo, kMasked);
    std::fill(row + hi, row + width, kMasked);
    return hi - lo;
  }
  std::fill(scratch, scratch + width, kMasked);
  uint32_t allowed = 0;
  // The row's keys are sorted: start at the first one inside [lo, hi).
  const auto keys_end = seq.edge_keys.begin() + seq.edge_offsets[i + 1];
  for (auto it = std::lower_bound(seq.edge_keys.begin() + seq.edge_offsets[i], keys_end,
                                  lo + key_begin);
       it != keys_end && *it < hi + key_begin; ++it) {
    scratch[*it - key_begin] = row[*it - key_begin];
    ++allowed;
  }
  std::copy(scratch, scratch + width, row);
  return allowed;
}

}  // namespace attnserve::core
