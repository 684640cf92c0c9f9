// Properties of attention that hold whatever the weights: without positional
// encoding and without a mask, self-attention is permutation-equivariant:
// permuting the input rows permutes the output rows, and the weights become
// W'[i][j] = W[p(i)][p(j)]; mean pooling is permutation-invariant.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/onednn_engine.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::RandomModel;
using testing::RandomVector;
using testing::RelativeL2;

struct Case {
  Relevance relevance;
  Normalization normalization;
  bool projections;
};

class Permutation : public ::testing::TestWithParam<Case> {};

TEST_P(Permutation, PermutingRowsPermutesOutputsAndWeights) {
  const Case c = GetParam();
  ModelConfig config;
  config.d_model = 48;
  config.num_heads = 6;
  config.relevance = c.relevance;
  config.normalization = c.normalization;
  config.projections = c.projections;
  config.scale = 0.3;
  auto model = RandomModel(config, 21);
  auto onednn = OneDnnEngine::Create(model);
  auto reference = CreateReferenceEngine(model);
  ASSERT_TRUE(onednn.ok() && reference.ok());
  std::mt19937 rng(4);
  for (uint32_t L : {1u, 2u, 17u, 130u}) {
    const std::vector<float> x = RandomVector(rng, L * 48, 1.0f);
    std::vector<uint32_t> perm(L);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<float> px(x.size());
    for (uint32_t i = 0; i < L; ++i) {
      std::copy_n(&x[perm[i] * 48], 48, &px[i * 48]);  // row i of px = row p(i) of x
    }
    for (Engine* engine : {static_cast<Engine*>(onednn->get()), reference->get()}) {
      SCOPED_TRACE(::testing::Message() << "L=" << L << (engine == reference->get() ? " reference" : " onednn"));
      std::vector<SequenceInput> batch(4);
      batch[0] = {x, L, {}, WeightsMode::kPerHead, Pooling::kNone, {}, false};
      batch[1] = {px, L, {}, WeightsMode::kPerHead, Pooling::kNone, {}, false};
      batch[2] = {x, L, {}, WeightsMode::kMean, Pooling::kMean, {}, false};
      batch[3] = {px, L, {}, WeightsMode::kMean, Pooling::kMean, {}, false};
      auto out = engine->Run(batch);
      ASSERT_TRUE(out.ok()) << out.status();
      const SequenceOutput &a = (*out)[0], &b = (*out)[1];
      std::vector<float> expected(a.output.size());
      for (uint32_t i = 0; i < L; ++i) {
        std::copy_n(&a.output[perm[i] * 48], 48, &expected[i * 48]);
      }
      EXPECT_LE(RelativeL2(b.output, expected), 1e-5);
      for (size_t h = 0; h < a.attention.size(); ++h) {
        std::vector<float> w(L * L);
        for (uint32_t i = 0; i < L; ++i) {
          for (uint32_t j = 0; j < L; ++j) w[i * L + j] = a.attention[h][perm[i] * L + perm[j]];
        }
        EXPECT_LE(RelativeL2(b.attention[h], w), 1e-5) << "head " << h;
      }
      EXPECT_LE(RelativeL2((*out)[3].output, (*out)[2].output), 1e-5);  // pooled: invariant
      // Not vacuous: the permutation changed the inputs' order, and the
      // outputs differ row by row unless L == 1.
      if (L > 2) {
        EXPECT_GT(RelativeL2(b.output, a.output), 1e-3);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, Permutation,
    ::testing::Values(Case{Relevance::kDot, Normalization::kSoftmax, true},
                      Case{Relevance::kDot, Normalization::kRelu, false},
                      Case{Relevance::kAdditive, Normalization::kSoftmax, true},
                      Case{Relevance::kAdditive, Normalization::kRelu, true}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(ToString(info.param.relevance)) + "_" +
             std::string(ToString(info.param.normalization)) +
             (info.param.projections ? "_proj" : "_noproj");
    });

}  // namespace
}  // namespace attnserve::core
