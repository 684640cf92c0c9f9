// Fuzz target (b): config.json text -> core::ParseModelConfig. Properties:
// never crashes or throws; a config it accepts passes ValidateModelConfig
// (the same invariants, checked on the value) and has a usable d_head and,
// for dot relevance, a finite positive scale; a rejection is INVALID_ARGUMENT
// with a message naming the source.
#include <cmath>
#include <cstdint>
#include <string_view>

#include "core/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attnserve::core;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "fuzz/config.json");
  if (!config.ok()) {
    FUZZ_CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(config.status().message().find("fuzz/config.json") != std::string_view::npos);
    return 0;
  }
  FUZZ_CHECK(ValidateModelConfig(*config, "fuzz").ok());
  FUZZ_CHECK(config->d_model > 0 && config->num_heads > 0);
  FUZZ_CHECK(config->d_head() * config->num_heads == config->d_model);
  FUZZ_CHECK(config->max_length > 0);
  if (config->relevance == Relevance::kDot) {
    FUZZ_CHECK(std::isfinite(config->scale) && config->scale > 0);
  }
  return 0;
}
