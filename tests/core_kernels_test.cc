// The engine's vectorized row kernels and the batch plan, against their
// definitions.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/attention_plan.h"
#include "core/kernels.h"

namespace attnserve::core {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Kernels, ExpIsAccurateToAFewUlp) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.001f) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::abs(kernels::Exp(x) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);  // ~2.5 ulp of fp32
  EXPECT_EQ(kernels::Exp(-kInf), 0.0f);
  EXPECT_EQ(kernels::Exp(-100.0f), 0.0f);
  EXPECT_EQ(kernels::Exp(0.0f), 1.0f);
}

TEST(Kernels, SoftmaxRowMatchesDefinitionAndZeroesMasked) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-20, 20);
  for (size_t n : {1, 7, 16, 33, 1000}) {
    std::vector<float> row(n);
    for (float& x : row) x = u(rng);
    if (n > 2) row[1] = -kInf;
    std::vector<float> got = row;
    ASSERT_TRUE(kernels::SoftmaxRow(got.data(), n));
    double max = -1e300, sum = 0;
    for (float x : row) max = std::max<double>(max, x);
    for (float x : row) sum += std::exp(x - max);
    for (size_t j = 0; j < n; ++j) {
      EXPECT_NEAR(got[j], std::exp(row[j] - max) / sum, 1e-7) << j;
    }
    if (n > 2) {
      EXPECT_EQ(got[1], 0.0f);
    }
  }
  std::vector<float> masked(9, -kInf);
  EXPECT_FALSE(kernels::SoftmaxRow(masked.data(), masked.size()));
  for (float x : masked) EXPECT_EQ(x, 0.0f);
}

TEST(Kernels, ReluNormalizeRow) {
  std::vector<float> row = {2.0f, -1.0f, -kInf, 4.0f};
  kernels::ReluNormalizeRow(row.data(), row.size(), 3);
  EXPECT_FLOAT_EQ(row[0], 2.0f / 3);
  EXPECT_EQ(row[1], 0.0f);
  EXPECT_EQ(row[2], 0.0f);
  EXPECT_FLOAT_EQ(row[3], 4.0f / 3);
}

TEST(Kernels, AdditiveScoresMatchTanhDefinition) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3, 3);
  const uint32_t dh = 24, n = 11, stride = 40;
  std::vector<float> q(dh), v(dh), keys(n * stride), got(n);
  for (float* p : {q.data(), v.data()}) for (uint32_t c = 0; c < dh; ++c) p[c] = u(rng);
  for (float& k : keys) k = u(rng);
  kernels::AdditiveScores(q.data(), keys.data(), stride, v.data(), dh, n, got.data());
  for (uint32_t j = 0; j < n; ++j) {
    double want = 0;
    for (uint32_t c = 0; c < dh; ++c) want += v[c] * std::tanh(double(q[c]) + keys[j * stride + c]);
    EXPECT_NEAR(got[j], want, 1e-5) << j;
  }
}

TEST(AttentionPlan, PacksSequencesAndCoversEveryRowOnce) {
  std::vector<float> data(1000);
  std::vector<SequenceInput> batch(3);
  const uint32_t lengths[] = {5, 300, 70};
  for (int s = 0; s < 3; ++s) {
    batch[s].length = lengths[s];
    batch[s].data = std::span<const float>(data).first(lengths[s]);
  }
  batch[1].mask.causal = true;
  batch[1].mask.window = 10;
  const AttentionPlan plan = MakeAttentionPlan(batch, /*block_floats=*/3000, 64, 8);
  EXPECT_EQ(plan.total_tokens, 375u);
  EXPECT_EQ(plan.seqs[1].offset, 5u);
  EXPECT_EQ(plan.seqs[2].offset, 305u);
  std::vector<int> covered(375, 0);
  for (const AttentionTask& t : plan.tasks) {
    const SequencePlan& sp = plan.seqs[t.seq];
    EXPECT_LE(t.row_end - t.row_begin, 3000 / sp.length < 8 ? 8u : std::min(64u, 3000 / sp.length));
    for (uint32_t i = t.row_begin; i < t.row_end; ++i) {
      ++covered[sp.offset + i];
      EXPECT_GE(sp.KeyBegin(i), t.key_begin);  // the block's keys cover every row's keys
      EXPECT_LE(sp.KeyEnd(i), t.key_end);
    }
    if (t.seq == 1) {  // causal + window 10: at most rows + 10 keys, not all 300
      EXPECT_LE(t.key_end - t.key_begin, t.row_end - t.row_begin + 10);
    }
  }
  for (int c : covered) EXPECT_EQ(c, 1);
}

TEST(AttentionPlan, MaskRowCombinesRangeAndEdges) {
  std::vector<float> data(6);
  SequenceInput in;
  in.length = 6;
  in.data = data;
  in.mask.causal = true;
  in.mask.edges = {3, 5, 3, 1, 3, 1, 3, 2, 4, 0};  // row 3: keys {1, 2, 5}; 5 > 3 is not causal
  const AttentionPlan plan = MakeAttentionPlan(std::span(&in, 1), 1000, 64, 8);
  std::vector<float> row(6, 1.0f), scratch(6);
  EXPECT_EQ(MaskRow(plan.seqs[0], 3, 0, row.data(), 6, scratch.data()), 2u);
  const std::vector<float> want = {-kInf, 1, 1, -kInf, -kInf, -kInf};
  EXPECT_EQ(row, want);
  std::vector<float> row0(6, 1.0f);  // row 0 has no edges at all
  EXPECT_EQ(MaskRow(plan.seqs[0], 0, 0, row0.data(), 6, scratch.data()), 0u);
}

}  // namespace
}  // namespace attnserve::core
