// The streaming (tiled, online-normalization) attention path against the
// reference engine: every mask kind (rows with no allowed key included) x
// both normalizations x every positional encoding x both relevances, in
// batches that mix tiled sequences with materialized ones (weights returned,
// or short). A small score budget and an odd key tile make sequences of a
// few hundred tokens take the path the engine uses for thousands, with
// partial last tiles and masks that begin and end inside tiles. Plus the
// default budgets on a sequence long enough to tile for real, and the
// primitive count staying constant.
//
// Tolerance: relative L2 <= 1e-5, as in core_engine_test: the online softmax
// rescales partial sums by exp(m_old - m_new) (a few ulp each, over ~10
// tiles), far below 1e-5, while a wrong mask or a missing rescale is O(1e-1).

#include <gtest/gtest.h>

#include <random>
#include <tuple>

#include "core/onednn_engine.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::Batch;
using testing::ExpectClose;
using testing::MaskKind;
using testing::RandomMask;
using testing::RandomModel;
using testing::RandomVector;

constexpr double kTolerance = 1e-5;
// 64 rows x 64 keys: any sequence longer than 64 tokens without weights
// streams its keys, 37 at a time (odd, so tiles straddle every pattern).
constexpr OneDnnEngineOptions kSmallTiles{
    .score_block_floats = 64 * 64, .key_tile = 37, .block_rows = 64};

// Every mask kind x pooling with no weights (tiled, L in [150, 400]), plus
// each mask kind once with per-head weights (the materialized path, in the
// same batch) and two short sequences.
Batch TiledBatch(uint32_t d_model, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> len(150, 400);
  Batch b;
  for (int mk = 0; mk < static_cast<int>(MaskKind::kCount); ++mk) {
    const auto kind = static_cast<MaskKind>(mk);
    for (Pooling pool : {Pooling::kNone, Pooling::kMean}) {
      const uint32_t L = len(rng);
      b.Add(L, d_model, RandomMask(kind, L, rng), WeightsMode::kNone, pool, rng);
    }
    const uint32_t L = len(rng) / 2;
    b.Add(L, d_model, RandomMask(kind, L, rng), WeightsMode::kPerHead, Pooling::kNone, rng);
  }
  b.Add(1, d_model, {}, WeightsMode::kNone, Pooling::kNone, rng);
  b.Add(40, d_model, RandomMask(MaskKind::kAll, 40, rng), WeightsMode::kNone, Pooling::kFirst,
        rng);
  b.Seal();
  return b;
}

using Combo = std::tuple<Positional, Relevance, Normalization>;

std::string ComboName(const Combo& combo) {
  const auto [pos, rel, norm] = combo;
  return std::string(ToString(pos)) + "_" + std::string(ToString(rel)) + "_" +
         std::string(ToString(norm));
}

class TiledVsReference : public ::testing::TestWithParam<Combo> {};

TEST_P(TiledVsReference, MatchesOnEveryMaskKind) {
  const auto [pos, rel, norm] = GetParam();
  auto model = RandomModel(testing::SmallConfig(pos, rel, norm, true, 400), 17);
  auto reference = CreateReferenceEngine(model);
  auto engine = OneDnnEngine::Create(model, kSmallTiles);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Batch batch = TiledBatch(32, 23);
  auto want = (*reference)->Run(batch.seqs);
  auto got = (*engine)->Run(batch.seqs);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectClose(*got, *want, kTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    AllCombinations, TiledVsReference,
    ::testing::Combine(::testing::Values(Positional::kNone, Positional::kSinusoidal,
                                         Positional::kLearned, Positional::kRotary),
                       ::testing::Values(Relevance::kDot, Relevance::kAdditive),
                       ::testing::Values(Normalization::kSoftmax, Normalization::kRelu)),
    [](const ::testing::TestParamInfo<Combo>& info) { return ComboName(info.param); });

TEST(TiledAttention, ParameterFreeModelMatches) {
  for (Normalization norm : {Normalization::kSoftmax, Normalization::kRelu}) {
    auto model = RandomModel(
        testing::SmallConfig(Positional::kRotary, Relevance::kDot, norm, false, 400), 3);
    auto reference = CreateReferenceEngine(model);
    auto engine = OneDnnEngine::Create(model, kSmallTiles);
    ASSERT_TRUE(reference.ok() && engine.ok());
    const Batch batch = TiledBatch(32, 29);
    auto want = (*reference)->Run(batch.seqs);
    auto got = (*engine)->Run(batch.seqs);
    ASSERT_TRUE(want.ok() && got.ok());
    ExpectClose(*got, *want, kTolerance);
  }
}

// Rows whose only allowed keys sit in the last tile, in no tile, or in the
// first: the running maximum starts late, never, or early.
TEST(TiledAttention, RowsWithLateOrNoAllowedKeys) {
  auto model = RandomModel(testing::SmallConfig(Positional::kNone, Relevance::kDot,
                                                Normalization::kSoftmax, true, 400), 8);
  auto reference = CreateReferenceEngine(model);
  auto engine = OneDnnEngine::Create(model, kSmallTiles);
  ASSERT_TRUE(reference.ok() && engine.ok());
  constexpr uint32_t L = 200;
  std::mt19937 rng(4);
  const std::vector<float> x = RandomVector(rng, L * 32, 3.0f);
  SequenceInput s{x, L, {}, WeightsMode::kNone, Pooling::kNone, {}, false};
  for (uint32_t i = 0; i < L; i += 3) {  // rows 0, 3, ...: last key only
    s.mask.edges.insert(s.mask.edges.end(), {i, L - 1});
  }
  for (uint32_t i = 1; i < L; i += 3) {  // rows 1, 4, ...: the first and the last key
    s.mask.edges.insert(s.mask.edges.end(), {i, 0, i, L - 1});
  }  // rows 2, 5, ...: none
  for (bool causal : {false, true}) {
    s.mask.causal = causal;
    auto want = (*reference)->Run(std::span(&s, 1));
    auto got = (*engine)->Run(std::span(&s, 1));
    ASSERT_TRUE(want.ok() && got.ok());
    ExpectClose(*got, *want, kTolerance);
  }
}

// One larger case on the default budgets (the path long sequences take):
// 1500 tokens, causal, against the reference.
TEST(TiledAttention, LongCausalSequenceOnDefaultTiles) {
  ModelConfig c = testing::SmallConfig(Positional::kRotary, Relevance::kDot,
                                       Normalization::kSoftmax, true, 1500);
  c.d_model = 64;
  c.num_heads = 2;
  c.scale = 0.125;
  auto model = RandomModel(c, 12);
  auto reference = CreateReferenceEngine(model);
  // 64 rows x 1500 keys exceeds this budget: tiles of the default 1024 keys.
  auto engine = OneDnnEngine::Create(model, {.score_block_floats = 64 * 1024, .block_rows = 64});
  ASSERT_TRUE(reference.ok() && engine.ok());
  std::mt19937 rng(1);
  const std::vector<float> x = RandomVector(rng, 1500 * 64, 1.0f);
  SequenceInput s{x, 1500, {}, WeightsMode::kNone, Pooling::kNone, {}, false};
  s.mask.causal = true;
  auto want = (*reference)->Run(std::span(&s, 1));
  auto got = (*engine)->Run(std::span(&s, 1));
  ASSERT_TRUE(want.ok() && got.ok());
  ExpectClose(*got, *want, kTolerance);
}

// Past the default budget (256 rows x 1024 keys of scores), with the engine's defaults:
// the tiled output equals the materialized one (asking for weights forces
// whole score rows).
TEST(TiledAttention, DefaultEngineTiledEqualsMaterialized) {
  ModelConfig c = testing::SmallConfig(Positional::kNone, Relevance::kDot,
                                       Normalization::kSoftmax, true);
  c.d_model = 64;
  c.num_heads = 2;
  auto model = RandomModel(c, 13);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  constexpr uint32_t L = 4200;
  std::mt19937 rng(2);
  const std::vector<float> x = RandomVector(rng, L * 64, 1.0f);
  std::vector<SequenceInput> seqs(2, SequenceInput{x, L, {}, WeightsMode::kNone, Pooling::kNone, {}, false});
  seqs[0].mask.window = 3000;
  seqs[1] = seqs[0];
  seqs[1].weights = WeightsMode::kMean;
  auto got = (*engine)->Run(seqs);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LE(testing::RelativeL2((*got)[0].output, (*got)[1].output), kTolerance);
}

// The streaming path creates no primitives either: varying lengths, masks,
// tiled and materialized sequences, after the first batch.
TEST(TiledAttention, SteadyStateCreatesNoPrimitives) {
  auto model = RandomModel(testing::SmallConfig(Positional::kRotary, Relevance::kDot,
                                                Normalization::kRelu, true, 400), 5);
  auto engine = OneDnnEngine::Create(model, kSmallTiles);
  ASSERT_TRUE(engine.ok());
  const uint64_t after_create = (*engine)->primitives_created();
  for (uint32_t seed = 0; seed < 4; ++seed) {
    ASSERT_TRUE((*engine)->Run(TiledBatch(32, seed).seqs).ok());
    EXPECT_EQ((*engine)->primitives_created(), after_create) << "batch " << seed;
  }
}

}  // namespace
}  // namespace attnserve::core
