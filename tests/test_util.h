// Helpers shared by the core tests: deterministic random models and inputs,
// and the error measure the engines are compared with.
#ifndef ATTNSERVE_TESTS_TEST_UTIL_H_
#define ATTNSERVE_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/model.h"

namespace attnserve::testing {

// Path of a file in the source tree (ATTNSERVE_SOURCE_DIR/relative).
std::string SourcePath(const std::string& relative);

// ||a - b||_2 / max(||b||_2, tiny): the relative L2 error of `a` against the
// reference `b`. Sizes must match (a mismatch returns +inf).
double RelativeL2(const std::vector<float>& a, const std::vector<float>& b);

// `n` values uniform in [-scale, scale] from `rng`.
std::vector<float> RandomVector(std::mt19937& rng, size_t n, float scale);

// A model with every tensor `config` needs, filled with random values of a
// size that keeps activations O(1) (Xavier-like).
std::shared_ptr<const core::Model> RandomModel(const core::ModelConfig& config,
                                               uint32_t seed);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TEST_UTIL_H_
