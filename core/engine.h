// Engine: runs multi-head self-attention for a batch of sequences of
// different lengths, each with its own mask, weights mode and pooling.
// Implementations are thread-safe: concurrent Run calls are allowed (the
// oneDNN engine serializes them internally).
#ifndef ATTNSERVE_CORE_ENGINE_H_
#define ATTNSERVE_CORE_ENGINE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kv_cache.h"
#include "core/model.h"
#include "core/page_allocator.h"

namespace attnserve::core {

// Which keys each query row may attend to. Rules combine: a pair (i, j) is
// allowed only if every given rule allows it.
struct Mask {
  bool causal = false;          // j <= i
  uint32_t window = 0;          // |i - j| <= window; 0 = unlimited
  std::vector<uint32_t> edges;  // flat (i, j) pairs; when non-empty, row i
                                // attends only to the j listed with it
};

enum class WeightsMode { kNone, kPerHead, kMean };
enum class Pooling { kNone, kMean, kFirst };

// One sequence of a batch. `data` is not owned and must stay valid until Run
// returns.
struct SequenceInput {
  std::span<const float> data;  // length x d_model, row-major
  uint32_t length = 0;          // L, number of rows (tokens)
  Mask mask;
  WeightsMode weights = WeightsMode::kNone;
  Pooling pooling = Pooling::kNone;
  // Optional: where Run writes this sequence's output instead of
  // SequenceOutput::output (which it then leaves empty), so a caller can
  // have it land in its own reply buffer without another copy. Must hold
  // exactly rows x d_model floats (rows = length, or 1 when pooled) and stay
  // valid until Run returns.
  std::span<float> output_buffer;
  // Set by a caller that has already run ValidateSequence on exactly this
  // input (the server does, before queuing): Run then skips the O(L x d) scan
  // for non-finite values. The size, length and edge checks, which guard
  // memory, run regardless.
  bool values_checked = false;
  // A streaming session's chunk: `data` holds the session's next `length`
  // rows, at absolute positions [cache->positions(), + length). They attend
  // over themselves and the cached keys and values of the rows before them
  // (the last mask.window of them; all when window is 0), with positions and
  // rotary angles counted from the session's first row; on success the
  // engine stores their keys and values in the cache and advances it. The
  // mask must be causal without edges, pooling kNone, and cache->row_bytes()
  // the engine's KvRowBytes(). Not owned; one sequence per cache per batch.
  KvCache* cache = nullptr;
};

// The rows of the session's cache a chunk attends over (0 without a cache):
// the latest `window` of them, or all when the window is 0.
inline uint32_t CachedKeyCount(const SequenceInput& seq) {
  if (seq.cache == nullptr) return 0;
  const uint32_t held = seq.cache->rows();
  return seq.mask.window == 0 ? held : std::min(held, seq.mask.window);
}

// The keys a sequence's rows are scored against: its own rows plus those
// cached ones. Its weights matrices are length x KeyCount.
inline uint32_t KeyCount(const SequenceInput& seq) { return seq.length + CachedKeyCount(seq); }

// The attention weights matrices a mode returns: num_heads, 1 (the mean) or 0.
inline uint32_t WeightsMatrixCount(const ModelConfig& config, WeightsMode mode) {
  return mode == WeightsMode::kPerHead ? config.num_heads : mode == WeightsMode::kMean ? 1 : 0;
}

// The rows of a sequence's output: its length, or 1 when pooled.
inline uint32_t OutputRowCount(const SequenceInput& seq) {
  return seq.pooling == Pooling::kNone ? seq.length : 1;
}

// One L x L matrix of attention weights, row-major (L x KeyCount for a
// session's chunk: columns are the cached keys, oldest first, then its own).
using WeightsMatrix = std::vector<float, DefaultInitAllocator<float>>;

struct SequenceOutput {
  uint32_t rows = 0;          // L, or 1 when pooled
  std::vector<float> output;  // rows x d_model, row-major
  // kPerHead: num_heads matrices; kMean: one (the mean over heads); each
  // L x L row-major, row i = the normalized weights of query i. A row whose
  // mask allows no key is all zeros (and its context vector is zero).
  std::vector<WeightsMatrix> attention;
  // OK, or this sequence's own failure while the rest of its batch was
  // computed: RESOURCE_EXHAUSTED when its output or attention weights could
  // not be allocated. The other fields are then empty.
  absl::Status status;
};

// Checks one sequence against a model before it is computed: data size ==
// length * d_model, length >= 1, every value finite, edges of even count with
// both ends < length: INVALID_ARGUMENT. length > max_length when the model has
// a positional encoding: OUT_OF_RANGE; an output_buffer of the wrong size:
// INVALID_ARGUMENT. Messages say what was expected. The scan for non-finite
// values is skipped when `values_checked` is set.
// With a cache (a session's chunk): a mask that is not causal or has edges,
// or pooling: INVALID_ARGUMENT; positions past a cache that must hold every
// row (window 0, or a cache shorter than the window) or, for sinusoidal and
// learned positions, past max_length: OUT_OF_RANGE. Rotary and no
// positions have no length limit in a session.
absl::Status ValidateSequence(const ModelConfig& config, const SequenceInput& seq);

// Where a sequence's `rows` x d_model output goes: its output_buffer when the
// caller gave one, else `out.output`, sized here.
std::span<float> OutputRows(const SequenceInput& in, uint32_t rows, size_t d_model,
                            SequenceOutput& out);

// The bytes a sequence occupies from admission to reply, for memory budgets:
// its input, its output (rows x d_model) and the attention weights its mode
// asks for (num_heads, or 1 for the mean, L x KeyCount matrices), all floats.
uint64_t SequenceBytes(const ModelConfig& config, const SequenceInput& seq);

// ValidateSequence for each sequence; the first failure's code, its message
// prefixed with "sequence N: ".
absl::Status ValidateBatch(const ModelConfig& config, std::span<const SequenceInput> batch);

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const Model& model() const = 0;

  // Computes every sequence of `batch`; on success returns one output per
  // input, in order. Every sequence is validated first (ValidateBatch); an
  // invalid one fails the whole call with its error and computes nothing.
  // What fails together: memory one sequence alone needs (its weights, its
  // output) failing to allocate fails that sequence only (its
  // SequenceOutput::status is RESOURCE_EXHAUSTED, the others are computed);
  // memory the batch shares (packed Q/K/V, scratch) fails the whole call with
  // RESOURCE_EXHAUSTED, a oneDNN error with INTERNAL. Never throws, and a
  // failed call leaves the engine ready for the next one.
  virtual absl::StatusOr<std::vector<SequenceOutput>> Run(
      std::span<const SequenceInput> batch) = 0;

  // Bytes of one row of a session's KvCache (its key and value), or 0 when
  // the engine does not compute sessions (Run then refuses a sequence with
  // a cache: UNIMPLEMENTED).
  virtual size_t KvRowBytes() const { return 0; }

  // How the engine computes, for startup logs (e.g. "bf16 (avx512_core_bf16;
  // projections and attention)").
  virtual std::string compute_path() const { return "unspecified"; }
};

// The reference engine: plain loops with double accumulation, written to be
// obviously correct; used by tests as the oracle. Slow.
absl::StatusOr<std::unique_ptr<Engine>> CreateReferenceEngine(
    std::shared_ptr<const Model> model);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ENGINE_H_
