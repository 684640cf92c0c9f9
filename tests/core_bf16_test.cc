// "precision": "bf16" against the exact (double) reference engine, on the
// materialized and the tiled attention paths, for every positional encoding,
// relevance and normalization; plus the automatic fp32 fallback on a CPU
// without native bf16 and the primitive count staying constant.
//
// Tolerance: relative L2 <= 2e-2. bf16 keeps 8 significant bits, so every
// rounded operand (input, weights, Q/K/V, the normalized weights P, the
// context) carries a relative error up to 2^-9 ~ 2e-3. Products accumulate in
// f32, so a K-term dot product of independently rounded terms keeps a
// relative error of that order (random signs average it down, they do not
// add it up), and four chained matmuls (QKV, Q.K^T, P.V, output) each add
// one such error: ~4 x 2e-3 ~ 8e-3 on the outputs. ReLU weights are the
// touchiest: relu(s) passes the absolute error of a score (~|q||k| 2^-8)
// straight through, while the weight itself may be far smaller than |q||k|.
// Measured on AVX512-BF16: 3e-3 to 7e-3 on most combinations, up to 1.5e-2
// for ReLU weight matrices with positional encodings; 2e-2 bounds that,
// while a wrong layout, head offset or missing bias is off by O(1). The
// measured error is printed (and recorded as a test property).

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <tuple>

#include "core/onednn_engine.h"
#include "dnnl.hpp"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::Batch;
using testing::ExpectClose;
using testing::MixedBatch;
using testing::RandomModel;

constexpr double kBf16Tolerance = 2e-2;
constexpr double kFp32Tolerance = 1e-5;

bool NativeBf16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

ModelConfig Bf16Config(Positional pos, Relevance rel, Normalization norm, bool proj) {
  ModelConfig c = testing::SmallConfig(pos, rel, norm, proj);
  c.precision = Precision::kBf16;
  return c;
}

using testing::Combo;

class Bf16VsReference : public ::testing::TestWithParam<Combo> {};

// Both attention paths in one go: the default engine (every sequence
// materialized) and one with tiny tiles (every long sequence streamed).
TEST_P(Bf16VsReference, WithinTolerance) {
  const auto [pos, rel, norm, proj] = GetParam();
  auto model = RandomModel(Bf16Config(pos, rel, norm, proj), 10);
  auto reference = CreateReferenceEngine(model);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const Batch batch = MixedBatch(32, 300, 12);
  auto want = (*reference)->Run(batch.seqs);
  ASSERT_TRUE(want.ok());
  for (const OneDnnEngineOptions& options :
       {OneDnnEngineOptions{},
        OneDnnEngineOptions{.score_block_floats = 64 * 64, .key_tile = 37, .block_rows = 64}}) {
    auto engine = OneDnnEngine::Create(model, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto got = (*engine)->Run(batch.seqs);
    ASSERT_TRUE(got.ok()) << got.status();
    const double worst = ExpectClose(*got, *want, kBf16Tolerance);
    const std::string& path = (*engine)->compute_path();
    ::testing::Test::RecordProperty("bf16_worst_relative_l2", std::to_string(worst));
    std::printf("bf16 worst relative L2 %.2e (tile %u; %s)\n", worst, options.key_tile,
                path.c_str());
    // A parameter-free additive model has no matmul bf16 applies to (its
    // tanh scores need f32 q and k): it runs, and is as exact as, fp32.
    if (NativeBf16() && (proj || rel == Relevance::kDot)) {
      // bf16 really computes in bf16: its error is far above fp32 rounding.
      EXPECT_EQ(path.rfind("bf16", 0), 0u) << path;
      EXPECT_GT(worst, 1e-4) << path;
    } else {
      EXPECT_EQ(path.rfind("fp32", 0), 0u) << path;
      EXPECT_LE(worst, kFp32Tolerance) << path;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, Bf16VsReference,
                         ::testing::ValuesIn(testing::AllCombos()),
                         testing::ComboName);

TEST(Bf16, ComputePathNamesThePrecision) {
  auto fp32 = OneDnnEngine::Create(RandomModel(
      testing::SmallConfig(Positional::kNone, Relevance::kDot, Normalization::kSoftmax, true), 1));
  auto bf16 = OneDnnEngine::Create(RandomModel(
      Bf16Config(Positional::kNone, Relevance::kDot, Normalization::kSoftmax, true), 1));
  ASSERT_TRUE(fp32.ok() && bf16.ok());
  EXPECT_EQ((*fp32)->compute_path().rfind("fp32", 0), 0u) << (*fp32)->compute_path();
  const std::string want = NativeBf16() ? "bf16 (" + OneDnnEngine::IsaName() +
                                              "; projections and attention)"
                                        : "fp32";
  EXPECT_EQ((*bf16)->compute_path().rfind(want, 0), 0u) << (*bf16)->compute_path();
}

// A CPU without native bf16 (here: oneDNN capped at AVX2) still serves a
// bf16 model, in fp32, at fp32 accuracy. oneDNN's ISA can only be capped
// before its first JIT, so the check runs in a fresh process: gtest's
// "threadsafe" death-test style re-executes this binary for just this
// statement, whatever ran before in this one.
void CheckFp32FallbackAndExit() {
  dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2);  // throws (the check fails) if too late
  [] {
    ASSERT_FALSE(NativeBf16());
    auto model = RandomModel(
        Bf16Config(Positional::kRotary, Relevance::kDot, Normalization::kSoftmax, true), 4);
    auto engine = OneDnnEngine::Create(model);
    auto reference = CreateReferenceEngine(model);
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_TRUE(reference.ok());
    EXPECT_EQ((*engine)->compute_path(), "fp32 (bf16 requested; avx2 has no native bf16)");
    const Batch batch = MixedBatch(32, 100, 3);
    auto want = (*reference)->Run(batch.seqs);
    auto got = (*engine)->Run(batch.seqs);
    ASSERT_TRUE(want.ok() && got.ok()) << got.status();
    ExpectClose(*got, *want, kFp32Tolerance);
  }();
  const bool failed = ::testing::Test::HasFailure();
  std::fprintf(stderr, "%s\n", failed ? "fp32 fallback check failed" : "fp32 fallback ok");
  std::exit(failed ? 1 : 0);
}

TEST(Bf16, FallsBackToFp32WithoutNativeBf16) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(CheckFp32FallbackAndExit(), ::testing::ExitedWithCode(0), "fp32 fallback ok");
}

// bf16 creates every primitive up front too: batches of new shapes, on both
// attention paths, create none.
TEST(Bf16, SteadyStateCreatesNoPrimitives) {
  auto model = RandomModel(
      Bf16Config(Positional::kSinusoidal, Relevance::kDot, Normalization::kSoftmax, true), 5);
  auto engine = OneDnnEngine::Create(
      model, {.score_block_floats = 64 * 64, .key_tile = 37, .block_rows = 64});
  ASSERT_TRUE(engine.ok());
  const uint64_t after_create = (*engine)->primitives_created();
  EXPECT_GT(after_create, 0u);
  for (uint32_t seed = 0; seed < 4; ++seed) {
    const Batch batch = MixedBatch(32, 60 + 70 * seed, seed);
    ASSERT_TRUE((*engine)->Run(batch.seqs).ok());
    EXPECT_EQ((*engine)->primitives_created(), after_create) << "batch " << seed;
  }
}

}  // namespace
}  // namespace attnserve::core
