#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace attnserve::testing {

std::string SourcePath(const std::string& relative) {
  return std::string(ATTNSERVE_SOURCE_DIR) + "/" + relative;
}

double RelativeL2(std::span<const float> a, std::span<const float> b) {
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

core::ModelConfig SmallConfig(core::Positional pos, core::Relevance rel,
                              core::Normalization norm, bool proj, uint32_t max_length) {
  core::ModelConfig c;
  c.d_model = 32;
  c.num_heads = 4;
  c.positional = pos;
  c.max_length = max_length;
  c.relevance = rel;
  c.normalization = norm;
  c.projections = proj;
  c.scale = 1.0 / std::sqrt(8.0);
  return c;
}

core::Mask RandomMask(MaskKind kind, uint32_t L, std::mt19937& rng) {
  core::Mask m;
  std::uniform_int_distribution<uint32_t> any(0, L - 1);
  const bool edges = kind == MaskKind::kEdges || kind == MaskKind::kAll;
  m.causal = kind == MaskKind::kCausal || kind == MaskKind::kCausalWindow ||
             kind == MaskKind::kAll;
  if (kind == MaskKind::kWindow || kind == MaskKind::kCausalWindow || kind == MaskKind::kAll) {
    m.window = std::uniform_int_distribution<uint32_t>(1, 6)(rng);
  }
  if (edges) {
    for (uint32_t n = 0; n < 3 * L; ++n) {
      const uint32_t i = any(rng);
      const uint32_t j = (n % 2 == 0) ? any(rng) : i - std::min(i, any(rng) % 3);
      m.edges.push_back(i);
      m.edges.push_back(j);
    }
  }
  return m;
}

void Batch::Add(uint32_t L, uint32_t d_model, core::Mask mask, core::WeightsMode weights,
                core::Pooling pooling, std::mt19937& rng) {
  data.push_back(RandomVector(rng, size_t{L} * d_model, 1.0f));
  core::SequenceInput s;
  s.length = L;
  s.mask = std::move(mask);
  s.weights = weights;
  s.pooling = pooling;
  seqs.push_back(std::move(s));
}

void Batch::Seal() {
  for (size_t n = 0; n < seqs.size(); ++n) seqs[n].data = data[n];
}

Batch MixedBatch(uint32_t d_model, uint32_t max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> len(1, max_len);
  Batch b;
  for (int mk = 0; mk < static_cast<int>(MaskKind::kCount); ++mk) {
    for (int wm = 0; wm < 3; ++wm) {
      for (int pool = 0; pool < 3; ++pool) {
        const size_t n = b.data.size();
        const uint32_t L = n == 0 ? 1 : n == 1 ? max_len : len(rng);
        // Draw the data first: the random stream stays what it always was.
        std::vector<float> x = RandomVector(rng, size_t{L} * d_model, 1.0f);
        b.data.push_back(std::move(x));
        core::SequenceInput s;
        s.length = L;
        s.mask = RandomMask(static_cast<MaskKind>(mk), L, rng);
        s.weights = static_cast<core::WeightsMode>(wm);
        s.pooling = static_cast<core::Pooling>(pool);
        b.seqs.push_back(s);
      }
    }
  }
  b.Seal();
  return b;
}

double ExpectClose(const std::vector<core::SequenceOutput>& got,
                   const std::vector<core::SequenceOutput>& want, double tol) {
  double worst = 0;
  EXPECT_EQ(got.size(), want.size());
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  for (size_t s = 0; s < got.size(); ++s) {
    SCOPED_TRACE(::testing::Message() << "sequence " << s);
    EXPECT_EQ(got[s].rows, want[s].rows);
    const double out_err = RelativeL2(got[s].output, want[s].output);
    EXPECT_LE(out_err, tol);
    worst = std::max(worst, out_err);
    EXPECT_EQ(got[s].attention.size(), want[s].attention.size());
    if (got[s].attention.size() != want[s].attention.size()) continue;
    for (size_t h = 0; h < got[s].attention.size(); ++h) {
      const double err = RelativeL2(got[s].attention[h], want[s].attention[h]);
      EXPECT_LE(err, tol) << "head " << h;
      worst = std::max(worst, err);
    }
  }
  return worst;
}

std::vector<Combo> AllCombos() {
  std::vector<Combo> combos;
  for (core::Positional pos : {core::Positional::kNone, core::Positional::kSinusoidal,
                               core::Positional::kLearned, core::Positional::kRotary}) {
    for (core::Relevance rel : {core::Relevance::kDot, core::Relevance::kAdditive}) {
      for (core::Normalization norm : {core::Normalization::kSoftmax, core::Normalization::kRelu}) {
        for (bool proj : {false, true}) combos.emplace_back(pos, rel, norm, proj);
      }
    }
  }
  return combos;
}

std::string ComboName(const ::testing::TestParamInfo<Combo>& info) {
  const auto [pos, rel, norm, proj] = info.param;
  return std::string(core::ToString(pos)) + "_" + std::string(core::ToString(rel)) + "_" +
         std::string(core::ToString(norm)) + (proj ? "_proj" : "_noproj");
}

}  // namespace attnserve::testing
