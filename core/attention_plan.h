// AttentionPlan: how a batch of sequences is packed end to end (token offsets)
// and split into attention tasks (one sequence, a block of query rows, one
// head or all of them, the range of keys those rows may see, and the key tile
// width the task streams that range in), with each mask turned into per-row
// key ranges plus a sorted edge list. Pure data, built once per batch by one
// thread and then only read; safe to read from many threads.
#ifndef ATTNSERVE_CORE_ATTENTION_PLAN_H_
#define ATTNSERVE_CORE_ATTENTION_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/engine.h"

namespace attnserve::core {

// A sequence in the packed buffers. Its keys are `length` rows: for a
// session's chunk, the `first_query` cached rows it attends over and then
// its own; otherwise its own rows alone (first_query = 0). Queries are the
// rows [first_query, length), the only ones projected, attended from and
// output. Row indices below (i, keys) count from the first key.
//
// A chunk's cached keys are either read from its session's ring where they
// are (`ring` set: a chunk whose weights are not returned; its tasks stream
// keys in tiles that never straddle the ring's wrap or the cached/own
// boundary) or copied into the packed Q/K/V before its own rows (the
// engine's PlaceCachedKeys: a chunk whose weights are returned, whose score
// rows must be whole).
struct SequencePlan {
  const SequenceInput* input = nullptr;
  size_t offset = 0;      // row of key `packed_key0` in the packed Q/K/V
  size_t out_offset = 0;  // row of the first query in the packed input and context
  uint32_t length = 0;    // keys: first_query + input->length
  uint32_t first_query = 0;
  const KvCache* ring = nullptr;  // keys [0, first_query) are read from here
  uint32_t queries() const { return length - first_query; }
  // The first key held in the packed Q/K/V: first_query when read from the
  // ring, else 0.
  uint32_t packed_key0() const { return ring != nullptr ? first_query : 0; }
  // Row of key j >= packed_key0() in the packed Q/K/V.
  size_t PackedRow(uint32_t j) const { return offset + (j - packed_key0()); }
  // Where the run of keys starting at `key` (< length) stays in one place:
  // one past its last key (the ring's wrap, the end of the cached keys, or
  // `length`).
  uint32_t RunEnd(uint32_t key) const;
  // The absolute position of the first query (a session's chunk goes on
  // from its cache; 0 otherwise).
  uint64_t FirstPosition() const { return input->cache ? input->cache->positions() : 0; }
  // The cache slot (its key, then value) of cached key j < first_query.
  const char* CachedRow(uint32_t j) const {
    return input->cache->Row(FirstPosition() - first_query + j);
  }
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
  uint32_t seq = 0;                       // index into AttentionPlan::seqs
  uint32_t row_begin = 0, row_end = 0;    // query rows within the sequence
  uint32_t key_begin = 0, key_end = 0;    // union of their key ranges
  uint32_t head_begin = 0, head_end = 0;  // heads this task computes
  // Keys per score tile. key_end - key_begin <= key_tile: the whole score
  // block is materialized and normalized at once (needed when the weights
  // are returned); otherwise keys are streamed in tiles of this width with a
  // running (online) normalization, so memory does not grow with L.
  uint32_t key_tile = 0;
  // Keys read from a session's ring: streamed in tiles (and runs), even
  // when they would fit one.
  bool ring = false;

  bool tiled() const { return ring || key_end - key_begin > key_tile; }
  // Score entries of one tile: rows x min(keys, key_tile).
  size_t TileFloats() const;
};

struct PlanOptions {
  // Score floats (rows x keys) one task keeps at once; ~1 MiB keeps a block
  // in L2 between Q.K^T, the normalization and P.V.
  size_t block_floats = size_t{1} << 18;
  uint32_t max_rows = 256;  // query rows per task at most
  uint32_t min_rows = 8;    // ... and at least (when the sequence has them)
  // Fewer tasks than this (a small batch of few heads) halve max_rows, down
  // to 64, so that every thread still gets work.
  size_t min_tasks = 1;
  // Keys per tile when a sequence without returned weights is too long for a
  // max_rows x L block within block_floats.
  uint32_t key_tile = 1024;
  // A chunk reading its cached keys from a ring gets one task for all its
  // heads (the attention computes them in one batched matmul per tile: a
  // chunk's blocks are small, and per-head calls cost more than their math).
  bool batch_ring_heads = false;
  // The threads that run the tasks (the engine's).
  size_t threads = 1;
};

struct AttentionPlan {
  std::vector<SequencePlan> seqs;
  std::vector<AttentionTask> tasks;  // most expensive first
  size_t total_tokens = 0;   // rows of the packed Q/K/V: every key not read from a ring
  size_t total_queries = 0;  // rows of the packed input and context: the queries
  bool has_cached_keys = false;  // some chunk's cached keys are copied into the packed Q/K/V
  // Largest TileFloats() of any task, times its heads when it computes them
  // in one block (batch_ring_heads).
  size_t max_tile_floats = 0;
  // Largest row_end - row_begin of any task, likewise times its heads.
  uint32_t max_rows = 0;
};

// REQUIRES: every sequence passed ValidateSequence; num_heads >= 1.
// max_rows is first halved (not below 64) while the batch would have fewer
// than min_tasks tasks. A sequence whose weights are returned is split in
// blocks of at most max_rows rows, fewer for long sequences so that a block's scores (rows x
// all its keys) stay within block_floats where possible. Other sequences use
// max_rows-row blocks and stream their keys in key_tile tiles when rows x
// keys would exceed block_floats. Each block is one task per head (so a
// single sequence still spreads over every core), except for kMean weights,
// where one task sums every head's weights into the shared mean.
AttentionPlan MakeAttentionPlan(std::span<const SequenceInput> batch, uint32_t num_heads,
                                const PlanOptions& options = {});

// Masks one score row of query `i`: `row` holds the scores of keys
// [key_begin, key_begin + width), which may be any window of the sequence's
// keys (a tile); entries the mask forbids become -inf. Returns how many keys
// of the window remain allowed. `scratch` holds at least `width` floats.
uint32_t MaskRow(const SequencePlan& seq, uint32_t i, uint32_t key_begin,
                 float* row, uint32_t width, float* scratch);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ATTENTION_PLAN_H_
