// ModelConfig: the hyper-parameters of one attention model, parsed from the
// model's config.json (format in docs/DESIGN.md, "Models"). A plain value type:
// immutable after parsing, safe to share between threads.
#ifndef ATTNSERVE_CORE_MODEL_CONFIG_H_
#define ATTNSERVE_CORE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace attnserve::core {

enum class Positional { kNone, kSinusoidal, kLearned, kRotary };
enum class Relevance { kDot, kAdditive };
enum class Normalization { kSoftmax, kRelu };
enum class Precision { kFp32, kBf16 };

// The spellings used in config.json and in ModelInfo ("sinusoidal", "dot", ...).
std::string_view ToString(Positional p);
std::string_view ToString(Relevance r);
std::string_view ToString(Normalization n);
std::string_view ToString(Precision p);

struct ModelConfig {
  uint32_t d_model = 0;    // width of every input/output vector; required
  uint32_t num_heads = 0;  // d_model % num_heads == 0; required
  Positional positional = Positional::kNone;
  // Longest sequence the positional encoding covers. Sequences longer than
  // this are rejected (OUT_OF_RANGE) unless positional == kNone.
  uint32_t max_length = 4096;
  Relevance relevance = Relevance::kDot;
  Normalization normalization = Normalization::kSoftmax;
  // false: parameter-free attention, Q = K = V = X, no output projection.
  bool projections = true;
  Precision precision = Precision::kFp32;  // compute precision; the wire is fp32
  // Multiplier of dot-product scores. config.json may omit it; the parser then
  // sets 1/sqrt(d_head). Unused by additive relevance.
  double scale = 0.0;

  uint32_t d_head() const { return num_heads == 0 ? 0 : d_model / num_heads; }
};

// Parses and validates config.json text. `source` (usually the file path) is
// named in every error message. Unknown keys, wrong types, unknown enum
// strings, non-positive sizes, d_model % num_heads != 0 and a non-finite or
// non-positive scale are INVALID_ARGUMENT errors.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view source);

// Checks the invariants ParseModelConfig enforces on a config built in code.
absl::Status ValidateModelConfig(const ModelConfig& config,
                                 std::string_view source);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_MODEL_CONFIG_H_
