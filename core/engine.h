// Engine: runs multi-head self-attention for a batch of sequences of
// different lengths, each with its own mask, weights mode and pooling.
// Implementations are thread-safe: concurrent Run calls are allowed (the
// oneDNN engine serializes them internally).
#ifndef ATTNSERVE_CORE_ENGINE_H_
#define ATTNSERVE_CORE_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model.h"

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
};

// An allocator whose value-initialization (vector::resize, the size
// constructor) leaves trivial elements uninitialized, so a large buffer that
// is about to be overwritten is not first zero-filled (a whole pass over its
// memory).
// Memory for large outputs: at or above kHugePageThreshold bytes it is mapped
// directly, aligned to 2 MiB and advised for transparent huge pages (one page
// fault per 2 MiB instead of 512, which is most of the cost of returning
// hundreds of MiB of weights); smaller sizes come from operator new.
inline constexpr size_t kHugePageThreshold = size_t{4} << 20;
void* AllocatePages(size_t bytes, size_t align);
void FreePages(void* p, size_t bytes, size_t align) noexcept;

template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() noexcept = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    return static_cast<T*>(AllocatePages(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { FreePages(p, n * sizeof(T), alignof(T)); }

  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;  // default-, not value-initialized
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T, typename U>
bool operator==(const DefaultInitAllocator<T>&, const DefaultInitAllocator<U>&) noexcept {
  return true;
}

// One L x L matrix of attention weights, row-major.
using WeightsMatrix = std::vector<float, DefaultInitAllocator<float>>;

struct SequenceOutput {
  uint32_t rows = 0;          // L, or 1 when pooled
  std::vector<float> output;  // rows x d_model, row-major
  // kPerHead: num_heads matrices; kMean: one (the mean over heads); each
  // L x L row-major, row i = the normalized weights of query i. A row whose
  // mask allows no key is all zeros (and its context vector is zero).
  std::vector<WeightsMatrix> attention;
};

// Checks one sequence against a model before it is computed: data size ==
// length * d_model, length >= 1, every value finite, edges of even count with
// both ends < length: INVALID_ARGUMENT. length > max_length when the model has
// a positional encoding: OUT_OF_RANGE; an output_buffer of the wrong size:
// INVALID_ARGUMENT. Messages say what was expected. The scan for non-finite
// values is skipped when `values_checked` is set.
absl::Status ValidateSequence(const ModelConfig& config, const SequenceInput& seq);

// Where a sequence's `rows` x d_model output goes: its output_buffer when the
// caller gave one, else `out.output`, sized here.
std::span<float> OutputRows(const SequenceInput& in, uint32_t rows, size_t d_model,
                            SequenceOutput& out);

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
  // Internal failures are INTERNAL. Never throws.
  virtual absl::StatusOr<std::vector<SequenceOutput>> Run(
      std::span<const SequenceInput> batch) = 0;
};

// The reference engine: plain loops with double accumulation, written to be
// obviously correct; used by tests as the oracle. Slow.
absl::StatusOr<std::unique_ptr<Engine>> CreateReferenceEngine(
    std::shared_ptr<const Model> model);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ENGINE_H_
