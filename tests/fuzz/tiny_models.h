// The tiny models the request targets (request_fuzz.cc, v2_request_fuzz.cc)
// validate and compute against: together every positional encoding that
// bounds L, both relevances, both normalizations, with and without
// projections; d_model 8, 2 heads, max_length <= 24, so that every run on the
// reference engine takes well under a millisecond. Built once per process.
#ifndef ATTNSERVE_TESTS_FUZZ_TINY_MODELS_H_
#define ATTNSERVE_TESTS_FUZZ_TINY_MODELS_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/engine.h"
#include "core/model.h"
#include "tests/fuzz/fuzz_check.h"

namespace attnserve::fuzz {

struct TinyModel {
  std::string name;
  core::ModelConfig config;
  std::unique_ptr<core::Engine> reference;
};

// Deterministic weights in [-0.5, 0.5].
inline std::vector<float> TinyValues(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (float& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(seed >> 8) / static_cast<float>(1u << 24) - 0.5f;
  }
  return v;
}

inline TinyModel MakeTinyModel(const std::string& name, core::Positional pos, core::Relevance rel,
                               core::Normalization norm, bool projections, uint32_t max_length) {
  core::ModelConfig c;
  c.d_model = 8;
  c.num_heads = 2;
  c.positional = pos;
  c.max_length = max_length;
  c.relevance = rel;
  c.normalization = norm;
  c.projections = projections;
  c.scale = 0.5;
  auto model = std::make_shared<core::Model>();
  model->name = name;
  model->config = c;
  core::ModelWeights& w = model->weights;
  const size_t d = c.d_model;
  if (projections) {
    w.q_weight = TinyValues(d * d, 1);
    w.k_weight = TinyValues(d * d, 2);
    w.v_weight = TinyValues(d * d, 3);
    w.out_weight = TinyValues(d * d, 4);
    w.q_bias = TinyValues(d, 5);
    w.k_bias = TinyValues(d, 6);
    w.v_bias = TinyValues(d, 7);
    w.out_bias = TinyValues(d, 8);
  }
  if (pos == core::Positional::kLearned) w.pos_embedding = TinyValues(max_length * d, 9);
  if (rel == core::Relevance::kAdditive) w.additive_v = TinyValues(d, 10);
  FUZZ_CHECK(core::ValidateModelWeights(c, w, name).ok());
  absl::StatusOr<std::unique_ptr<core::Engine>> engine = core::CreateReferenceEngine(model);
  FUZZ_CHECK(engine.ok());
  return {name, c, *std::move(engine)};
}

// "learned" (max_length 16, dot, softmax), "rotary" (24, additive, relu) and
// "plain" (no positional encoding, so L is unbounded; no projections).
inline const std::vector<TinyModel>& TinyModels() {
  static const auto* models = new std::vector<TinyModel>([] {
    std::vector<TinyModel> m;
    m.push_back(MakeTinyModel("learned", core::Positional::kLearned, core::Relevance::kDot,
                              core::Normalization::kSoftmax, true, 16));
    m.push_back(MakeTinyModel("rotary", core::Positional::kRotary, core::Relevance::kAdditive,
                              core::Normalization::kRelu, true, 24));
    m.push_back(MakeTinyModel("plain", core::Positional::kNone, core::Relevance::kDot,
                              core::Normalization::kSoftmax, false, 24));
    return m;
  }());
  return *models;
}

inline bool AllFinite(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) return false;
  }
  return true;
}

}  // namespace attnserve::fuzz

#endif  // ATTNSERVE_TESTS_FUZZ_TINY_MODELS_H_
