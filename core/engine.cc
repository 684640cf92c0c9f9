#include "core/engine.h"

#include <sys/mman.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"

namespace attnserve::core {
namespace {

// True when no value is NaN or +-Inf: an exponent of all ones. A branch-free
// OR over the bits vectorizes (std::isfinite in a loop with an early return
// does not), which matters: every request's every value passes here.
bool AllFinite(std::span<const float> values) {
  uint32_t inf_or_nan = 0;
  for (float v : values) {
    const uint32_t bits = std::bit_cast<uint32_t>(v);
    inf_or_nan |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return inf_or_nan == 0;
}

constexpr size_t kHugePage = size_t{2} << 20;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// The session rules of ValidateSequence (engine.h).
absl::Status ValidateChunk(const ModelConfig& config, const SequenceInput& seq) {
  const KvCache& cache = *seq.cache;
  if (!seq.mask.causal || !seq.mask.edges.empty()) {
    return absl::InvalidArgumentError(
        "a session's chunk attends causally: expected mask.causal and no mask.edges");
  }
  if (seq.pooling != Pooling::kNone) {
    return absl::InvalidArgumentError("a session's chunk cannot be pooled: expected pooling none");
  }
  // A ring at least as long as the window keeps every row a later chunk can
  // see; a shorter one (window 0: every row; or a session capped below its
  // window) must never wrap.
  const uint64_t end = cache.positions() + seq.length;  // one past the chunk's last position
  if ((seq.mask.window == 0 || cache.capacity() < seq.mask.window) && end > cache.capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "the session would hold ", end, " rows; its cache holds ", cache.capacity(),
        seq.mask.window == 0 ? " (window 0: every row)"
                             : absl::StrCat(" (fewer than window ", seq.mask.window, ")")));
  }
  if ((config.positional == Positional::kSinusoidal ||
       config.positional == Positional::kLearned) &&
      end > config.max_length) {
    return absl::OutOfRangeError(absl::StrCat(
        "the session would reach position ", end - 1, "; the model's ",
        std::string(ToString(config.positional)), " positions end at max_length ",
        config.max_length));
  }
  return absl::OkStatus();
}

}  // namespace

void* AllocatePages(size_t bytes, size_t align) {
  if (bytes < kHugePageThreshold) return ::operator new(bytes, std::align_val_t{align});
  // Map one huge page more than needed and unmap the misaligned head and
  // the tail, so the whole buffer lies in aligned 2 MiB pages.
  const size_t size = RoundUp(bytes, kHugePage);
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = RoundUp(begin, kHugePage);
  if (aligned > begin) munmap(raw, aligned - begin);
  if (const size_t tail = begin + size + kHugePage - (aligned + size); tail > 0) {
    munmap(reinterpret_cast<void*>(aligned + size), tail);
  }
  void* p = reinterpret_cast<void*>(aligned);
  madvise(p, size, MADV_HUGEPAGE);  // advisory: without THP, 4 KiB pages serve
  return p;
}

void FreePages(void* p, size_t bytes, size_t align) noexcept {
  if (p == nullptr) return;
  if (bytes < kHugePageThreshold) {
    ::operator delete(p, std::align_val_t{align});
  } else {
    munmap(p, RoundUp(bytes, kHugePage));
  }
}

absl::Status ValidateSequence(const ModelConfig& config, const SequenceInput& seq) {
  const uint64_t d = config.d_model;
  if (seq.length == 0) {
    return absl::InvalidArgumentError(
        "input is empty: expected at least 1 row of d_model values");
  }
  if (seq.data.size() != uint64_t{seq.length} * d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input has ", seq.data.size(), " values; expected rows * d_model = ",
        seq.length, " * ", d, " = ", uint64_t{seq.length} * d));
  }
  if (seq.cache != nullptr) {
    if (absl::Status st = ValidateChunk(config, seq); !st.ok()) return st;
  } else if (config.positional != Positional::kNone && seq.length > config.max_length) {
    return absl::OutOfRangeError(absl::StrCat(
        "sequence length ", seq.length, " exceeds the model's max_length ",
        config.max_length, " (", std::string(ToString(config.positional)),
        " positional encoding)"));
  }
  if (!seq.values_checked && !AllFinite(seq.data)) {
    for (size_t i = 0; i < seq.data.size(); ++i) {
      if (!std::isfinite(seq.data[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "input value at row ", i / d, ", column ", i % d,
            " is not finite (", seq.data[i], "); expected finite floats"));
      }
    }
  }
  if (!seq.output_buffer.empty()) {
    const uint64_t rows = OutputRowCount(seq);
    if (seq.output_buffer.size() != rows * d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "output buffer holds ", seq.output_buffer.size(), " floats; expected rows * d_model = ",
          rows, " * ", d, " = ", rows * d));
    }
  }
  const std::vector<uint32_t>& edges = seq.mask.edges;
  if (edges.size() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask.edges has ", edges.size(),
        " values; expected an even count of flat (i, j) pairs"));
  }
  for (size_t e = 0; e < edges.size(); ++e) {
    if (edges[e] >= seq.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mask.edges pair ", e / 2, " has ", (e % 2 == 0 ? "i" : "j"), " = ",
          edges[e], "; expected < sequence length ", seq.length));
    }
  }
  return absl::OkStatus();
}

std::span<float> OutputRows(const SequenceInput& in, uint32_t rows, size_t d_model,
                            SequenceOutput& out) {
  out.rows = rows;
  if (!in.output_buffer.empty()) return in.output_buffer;
  out.output.resize(size_t{rows} * d_model);
  return out.output;
}

uint64_t SequenceBytes(const ModelConfig& config, const SequenceInput& seq) {
  const uint64_t L = seq.length, d = config.d_model, keys = KeyCount(seq);
  const uint64_t rows = OutputRowCount(seq);
  const uint64_t matrices = WeightsMatrixCount(config, seq.weights);
  return (L * d + rows * d + matrices * L * keys) * sizeof(float);
}

absl::Status ValidateBatch(const ModelConfig& config, std::span<const SequenceInput> batch) {
  for (size_t s = 0; s < batch.size(); ++s) {
    absl::Status st = ValidateSequence(config, batch[s]);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("sequence ", s, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace attnserve::core
