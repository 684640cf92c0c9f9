#include "tests/test_util.h"

#include <cmath>
#include <limits>

namespace attnserve::testing {

std::string SourcePath(const std::string& relative) {
  return std::string(ATTNSERVE_SOURCE_DIR) + "/" + relative;
}

double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    norm += static_cast<double>(b[i]) * b[i];
  }
  if (norm == 0) return std::sqrt(diff);  // exact zeros expected: absolute error
  return std::sqrt(diff / norm);
}

std::vector<float> RandomVector(std::mt19937& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::shared_ptr<const core::Model> RandomModel(const core::ModelConfig& config,
                                               uint32_t seed) {
  std::mt19937 rng(seed);
  auto model = std::make_shared<core::Model>();
  model->name = "random";
  model->config = config;
  const size_t d = config.d_model;
  const float w = std::sqrt(3.0f / d);  // unit-variance outputs for unit inputs
  core::ModelWeights& wt = model->weights;
  if (config.projections) {
    wt.q_weight = RandomVector(rng, d * d, w);
    wt.k_weight = RandomVector(rng, d * d, w);
    wt.v_weight = RandomVector(rng, d * d, w);
    wt.out_weight = RandomVector(rng, d * d, w);
    wt.q_bias = RandomVector(rng, d, 0.1f);
    wt.k_bias = RandomVector(rng, d, 0.1f);
    wt.v_bias = RandomVector(rng, d, 0.1f);
    wt.out_bias = RandomVector(rng, d, 0.1f);
  }
  if (config.positional == core::Positional::kLearned) {
    wt.pos_embedding = RandomVector(rng, size_t{config.max_length} * d, 0.5f);
  }
  if (config.relevance == core::Relevance::kAdditive) {
    wt.additive_v = RandomVector(rng, d, std::sqrt(3.0f / config.d_head()));
  }
  return model;
}

}  // namespace attnserve::testing
