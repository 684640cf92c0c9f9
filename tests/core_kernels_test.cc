// The engine's vectorized row kernels and the batch plan, against their
// definitions.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/attention_plan.h"
#include "core/kernels.h"
#include "core/safetensors.h"

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

// Streaming a row through OnlineSoftmaxRow tile by tile, rescaling what was
// accumulated as told, gives the softmax of the whole row; all-masked tiles
// (first, middle, or every one) are handled.
TEST(Kernels, OnlineSoftmaxTilesEqualWholeRowSoftmax) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-30, 30);
  for (int pattern = 0; pattern < 4; ++pattern) {
    const size_t n = 50, tile = 8;
    std::vector<float> row(n);
    for (size_t j = 0; j < n; ++j) {
      const bool masked = pattern == 1 ? j < 20 : pattern == 2 ? (j / tile) % 2 == 1 : pattern == 3;
      row[j] = masked ? -kInf : u(rng) + (j > 30 ? 25.0f : 0.0f);  // the max moves late
    }
    std::vector<float> want = row;
    const bool any = kernels::SoftmaxRow(want.data(), n);
    float max = -kInf, sum = 0;
    std::vector<float> got(n, 0.0f);  // unnormalized weights seen so far
    for (size_t kb = 0; kb < n; kb += tile) {
      const size_t w = std::min(tile, n - kb);
      std::vector<float> part(row.begin() + kb, row.begin() + kb + w);
      const float rescale = kernels::OnlineSoftmaxRow(part.data(), w, &max, &sum);
      for (size_t j = 0; j < kb; ++j) got[j] *= rescale;
      std::copy(part.begin(), part.end(), got.begin() + kb);
    }
    EXPECT_EQ(sum > 0, any) << pattern;
    for (size_t j = 0; j < n; ++j) {
      EXPECT_NEAR(sum > 0 ? got[j] / sum : got[j], want[j], 1e-6) << pattern << " " << j;
    }
  }
}

TEST(Kernels, ReluRowAndBf16Conversion) {
  std::vector<float> row = {-kInf, -1.0f, 0.0f, 2.5f};
  kernels::ReluRow(row.data(), row.size());
  EXPECT_EQ(row, (std::vector<float>{0.0f, 0.0f, 0.0f, 2.5f}));
  // Round to nearest even on the 16 dropped bits; exact values stay exact.
  // bf16 keeps 7 mantissa bits: the ulp of 1 is 2^-7.
  std::vector<float> src = {1.0f, -2.5f, 1.0f + 0x1p-8f, 1.0f + 0x3p-8f, 1.0f + 0x1p-9f,
                            1.0f + 0x1p-8f + 0x1p-20f, 65504.0f};
  const std::vector<float> want = {1.0f, -2.5f, 1.0f, 1.0f + 0x1p-6f, 1.0f,
                                   1.0f + 0x1p-7f, 65536.0f};
  std::mt19937 rng(9);  // and the loader's scalar conversion on any magnitude
  std::uniform_real_distribution<float> mantissa(-2.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-140, 120);
  for (int n = 0; n < 1000; ++n) src.push_back(std::ldexp(mantissa(rng), exponent(rng)));
  std::vector<uint16_t> bf(src.size());
  std::vector<float> back(src.size());
  kernels::ToBf16(src.data(), bf.data(), src.size());
  kernels::FromBf16(bf.data(), back.data(), bf.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(back[i], want[i]) << i;
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(bf[i], FloatToBf16(src[i])) << src[i];
    EXPECT_EQ(back[i], Bf16ToFloat(bf[i])) << src[i];
  }
}

// Every (row, head) of every sequence belongs to exactly one task, whose key
// range covers the row's; blocks respect the row and tile budgets.
TEST(AttentionPlan, PacksSequencesAndCoversEveryRowAndHeadOnce) {
  constexpr uint32_t kHeads = 3;
  std::vector<float> data(100000);
  std::vector<SequenceInput> batch(4);
  const uint32_t lengths[] = {5, 300, 70, 2000};
  const WeightsMode modes[] = {WeightsMode::kPerHead, WeightsMode::kMean, WeightsMode::kNone,
                               WeightsMode::kNone};
  for (int s = 0; s < 4; ++s) {
    batch[s].length = lengths[s];
    batch[s].data = std::span<const float>(data).first(lengths[s]);
    batch[s].weights = modes[s];
  }
  batch[1].mask.causal = true;
  batch[1].mask.window = 10;
  const PlanOptions options{.block_floats = 3000, .max_rows = 64, .min_rows = 8, .key_tile = 100};
  const AttentionPlan plan = MakeAttentionPlan(batch, kHeads, options);
  EXPECT_EQ(plan.total_tokens, 2375u);
  EXPECT_EQ(plan.seqs[1].offset, 5u);
  EXPECT_EQ(plan.seqs[2].offset, 305u);
  std::vector<int> covered(2375 * kHeads, 0);
  for (const AttentionTask& t : plan.tasks) {
    const SequencePlan& sp = plan.seqs[t.seq];
    const uint32_t rows = t.row_end - t.row_begin;
    if (sp.input->weights != WeightsMode::kNone) {  // whole rows, fewer of them
      EXPECT_LE(rows, 3000 / sp.length < 8 ? 8u : std::min(64u, 3000 / sp.length));
      EXPECT_FALSE(t.tiled());
    } else {  // full blocks; tiles once rows x keys exceed the budget
      EXPECT_EQ(rows, std::min(64u, sp.length - t.row_begin));
      EXPECT_EQ(t.key_tile, 64 * sp.length > 3000 ? 100u : sp.length);
    }
    EXPECT_LE(t.TileFloats(), plan.max_tile_floats);
    // kMean sums heads in one task; everything else is one task per head.
    EXPECT_EQ(t.head_end - t.head_begin, sp.input->weights == WeightsMode::kMean ? kHeads : 1u);
    for (uint32_t i = t.row_begin; i < t.row_end; ++i) {
      for (uint32_t h = t.head_begin; h < t.head_end; ++h) ++covered[(sp.offset + i) * kHeads + h];
      EXPECT_GE(sp.KeyBegin(i), t.key_begin);  // the block's keys cover every row's keys
      EXPECT_LE(sp.KeyEnd(i), t.key_end);
    }
    if (t.seq == 1) {  // causal + window 10: at most rows + 10 keys, not all 300
      EXPECT_LE(t.key_end - t.key_begin, rows + 10);
    }
  }
  for (int c : covered) EXPECT_EQ(c, 1);
}

// Blocks of max_rows rows while the batch has min_tasks tasks; a batch too
// small for that gets blocks halved down to 64 rows, never below.
TEST(AttentionPlan, SmallBatchesGetSmallerBlocks) {
  std::vector<float> data(1000);
  SequenceInput in;
  in.length = 1000;
  in.data = data;
  auto rows_of = [&](uint32_t heads, size_t min_tasks) {
    const PlanOptions options{.max_rows = 256, .min_tasks = min_tasks};
    const AttentionPlan plan = MakeAttentionPlan(std::span(&in, 1), heads, options);
    return plan.max_rows;
  };
  EXPECT_EQ(rows_of(1, 1), 256u);   // 4 tasks of 256 rows
  EXPECT_EQ(rows_of(1, 4), 256u);
  EXPECT_EQ(rows_of(1, 5), 128u);   // 8 tasks
  EXPECT_EQ(rows_of(1, 16), 64u);   // 16 tasks
  EXPECT_EQ(rows_of(1, 100), 64u);  // 16 tasks: 64 is the floor
  EXPECT_EQ(rows_of(8, 8), 256u);   // 4 blocks x 8 heads
}

TEST(AttentionPlan, MaskRowCombinesRangeAndEdges) {
  std::vector<float> data(6);
  SequenceInput in;
  in.length = 6;
  in.data = data;
  in.mask.causal = true;
  in.mask.edges = {3, 5, 3, 1, 3, 1, 3, 2, 4, 0};  // row 3: keys {1, 2, 5}; 5 > 3 is not causal
  const AttentionPlan plan = MakeAttentionPlan(std::span(&in, 1), 1);
  std::vector<float> row(6, 1.0f), scratch(6);
  EXPECT_EQ(MaskRow(plan.seqs[0], 3, 0, row.data(), 6, scratch.data()), 2u);
  const std::vector<float> want = {-kInf, 1, 1, -kInf, -kInf, -kInf};
  EXPECT_EQ(row, want);
  std::vector<float> row0(6, 1.0f);  // row 0 has no edges at all
  EXPECT_EQ(MaskRow(plan.seqs[0], 0, 0, row0.data(), 6, scratch.data()), 0u);
}

// A tile (any window of keys) sees exactly the allowed keys that fall in it,
// for every mask rule: the tiles of a row add up to the whole row.
TEST(AttentionPlan, MaskRowOnTilesAddsUpToTheWholeRow) {
  constexpr uint32_t L = 40;
  std::vector<float> data(L);
  std::mt19937 rng(5);
  for (int variant = 0; variant < 8; ++variant) {
    SequenceInput in;
    in.length = L;
    in.data = data;
    in.mask.causal = variant & 1;
    in.mask.window = (variant & 2) ? 7 : 0;
    if (variant & 4) {
      for (int e = 0; e < 120; ++e) {
        in.mask.edges.push_back(rng() % L);
        in.mask.edges.push_back(rng() % L);
      }
    }
    const AttentionPlan plan = MakeAttentionPlan(std::span(&in, 1), 1);
    std::vector<float> scratch(L);
    for (uint32_t i = 0; i < L; ++i) {
      std::vector<float> whole(L, 1.0f);
      const uint32_t allowed = MaskRow(plan.seqs[0], i, 0, whole.data(), L, scratch.data());
      for (uint32_t tile : {1u, 6u, 16u}) {
        uint32_t sum = 0;
        for (uint32_t kb = 0; kb < L; kb += tile) {
          const uint32_t w = std::min(tile, L - kb);
          std::vector<float> part(w, 1.0f);
          sum += MaskRow(plan.seqs[0], i, kb, part.data(), w, scratch.data());
          for (uint32_t j = 0; j < w; ++j) {
            EXPECT_EQ(part[j], whole[kb + j]) << "variant " << variant << " row " << i << " key " << kb + j;
          }
        }
        EXPECT_EQ(sum, allowed) << "variant " << variant << " row " << i << " tile " << tile;
      }
    }
  }
}

}  // namespace
}  // namespace attnserve::core
