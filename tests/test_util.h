// Helpers shared by the core tests: deterministic random models and inputs,
// and the error measure the engines are compared with.
#ifndef ATTNSERVE_TESTS_TEST_UTIL_H_
#define ATTNSERVE_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "core/engine.h"
#include "core/model.h"

namespace attnserve::testing {

// Path of a file in the source tree (ATTNSERVE_SOURCE_DIR/relative).
std::string SourcePath(const std::string& relative);

// ||a - b||_2 / max(||b||_2, tiny): the relative L2 error of `a` against the
// reference `b`. Sizes must match (a mismatch returns +inf).
double RelativeL2(std::span<const float> a, std::span<const float> b);

// `n` values uniform in [-scale, scale] from `rng`.
std::vector<float> RandomVector(std::mt19937& rng, size_t n, float scale);

// A model with every tensor `config` needs, filled with random values of a
// size that keeps activations O(1) (Xavier-like).
std::shared_ptr<const core::Model> RandomModel(const core::ModelConfig& config,
                                               uint32_t seed);

// The small test model: d_model 32, 4 heads, max_length 300 (unless
// `max_length` says otherwise), scale 1/sqrt(8).
core::ModelConfig SmallConfig(core::Positional pos, core::Relevance rel,
                              core::Normalization norm, bool proj,
                              uint32_t max_length = 300);

enum class MaskKind { kNone, kCausal, kWindow, kEdges, kCausalWindow, kAll, kCount };

// A mask of `kind` for length L: windows of 1..6; edges about three keys per
// row, duplicates included, some rows with none (zero weights and context).
core::Mask RandomMask(MaskKind kind, uint32_t L, std::mt19937& rng);

// Sequences and the data they point into (kept together: SequenceInput does
// not own its data).
struct Batch {
  std::vector<std::vector<float>> data;
  std::vector<core::SequenceInput> seqs;
  // Adds a sequence of random inputs; fix data pointers with Seal().
  void Add(uint32_t L, uint32_t d_model, core::Mask mask, core::WeightsMode weights,
           core::Pooling pooling, std::mt19937& rng);
  void Seal();
};

// Every (mask kind x weights mode x pooling), each with a random length in
// [1, max_len] (the first is 1, the second max_len).
Batch MixedBatch(uint32_t d_model, uint32_t max_len, uint32_t seed);

// Expects every output and weight matrix of `got` within relative L2 `tol`
// of `want`; returns the largest error seen.
double ExpectClose(const std::vector<core::SequenceOutput>& got,
                   const std::vector<core::SequenceOutput>& want, double tol);

// One of the 32 model configurations the engine tests cover: positional x
// relevance x normalization x projections.
using Combo = std::tuple<core::Positional, core::Relevance, core::Normalization, bool>;
// Every Combo, for ::testing::ValuesIn.
std::vector<Combo> AllCombos();
// "sinusoidal_dot_softmax_proj": a test name for a Combo parameter.
std::string ComboName(const ::testing::TestParamInfo<Combo>& info);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TEST_UTIL_H_
