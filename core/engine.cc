#include "core/engine.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace attnserve::core {

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
  if (config.positional != Positional::kNone && seq.length > config.max_length) {
    return absl::OutOfRangeError(absl::StrCat(
        "sequence length ", seq.length, " exceeds the model's max_length ",
        config.max_length, " (", std::string(ToString(config.positional)),
        " positional encoding)"));
  }
  for (size_t i = 0; i < seq.data.size(); ++i) {
    if (!std::isfinite(seq.data[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input value at row ", i / d, ", column ", i % d,
          " is not finite (", seq.data[i], "); expected finite floats"));
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

}  // namespace attnserve::core
