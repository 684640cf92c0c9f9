// The embedded demo model (models/demo, written by models/make_demo.py) loads
// through the same LoadModel path the server uses, with the config DESIGN.md
// gives and weights of PyTorch's shapes and init ranges.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/model.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

// Largest |value| in `v`.
float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::abs(x));
  return m;
}

TEST(DemoModelTest, LoadsWithTheDocumentedConfig) {
  absl::StatusOr<Model> model = LoadModel(testing::SourcePath("models/demo"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, "demo");
  const ModelConfig& c = model->config;
  EXPECT_EQ(c.d_model, 256u);
  EXPECT_EQ(c.num_heads, 8u);
  EXPECT_EQ(c.d_head(), 32u);
  EXPECT_EQ(c.positional, Positional::kSinusoidal);
  EXPECT_EQ(c.max_length, 4096u);
  EXPECT_EQ(c.relevance, Relevance::kDot);
  EXPECT_EQ(c.normalization, Normalization::kSoftmax);
  EXPECT_TRUE(c.projections);
  EXPECT_EQ(c.precision, Precision::kFp32);
  EXPECT_DOUBLE_EQ(c.scale, 1.0 / std::sqrt(32.0));
}

TEST(DemoModelTest, WeightsHaveTheExpectedSizesAndRanges) {
  absl::StatusOr<Model> model = LoadModel(testing::SourcePath("models/demo"));
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelWeights& w = model->weights;
  const size_t d = 256;
  for (const auto* m : {&w.q_weight, &w.k_weight, &w.v_weight, &w.out_weight}) {
    EXPECT_EQ(m->size(), d * d);
  }
  for (const auto* b : {&w.q_bias, &w.k_bias, &w.v_bias, &w.out_bias}) {
    EXPECT_EQ(b->size(), d);
    // make_demo.py draws biases from U(-0.02, 0.02), not zeros, so that the
    // bias paths of the engines are exercised.
    EXPECT_GT(MaxAbs(*b), 0.0f);
    EXPECT_LE(MaxAbs(*b), 0.02f);
  }
  EXPECT_TRUE(w.pos_embedding.empty());
  EXPECT_TRUE(w.additive_v.empty());
  // Xavier-uniform bounds: sqrt(6 / (fan_in + fan_out)), in_proj_weight
  // initialised as one [768, 256] tensor as PyTorch does.
  const float in_bound = std::sqrt(6.0f / (3 * d + d));
  EXPECT_LE(MaxAbs(w.q_weight), in_bound);
  EXPECT_LE(MaxAbs(w.v_weight), in_bound);
  EXPECT_GT(MaxAbs(w.k_weight), 0.9f * in_bound);  // not all tiny or zero
  EXPECT_LE(MaxAbs(w.out_weight), std::sqrt(6.0f / (2 * d)));
}

}  // namespace
}  // namespace attnserve::core
