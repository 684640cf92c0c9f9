// The oneDNN engine against the reference engine on randomized batches that
// mix lengths (1..300), masks, weights modes and poolings, for every
// combination of positional x relevance x normalization x projections; plus
// validation errors, primitive reuse and batch invariance.
//
// Tolerance: relative L2 <= 1e-5. fp32 rounding gives per-element relative
// error ~6e-8 * sqrt(K) for a K-term dot product (K <= 300 keys or 64
// features here: ~1e-6 at worst), and the engine's exp is accurate to ~2 ulp;
// 1e-5 leaves a 10x margin while any real bug (a wrong mask, position or
// head offset) gives errors of order 1e-1.

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <thread>
#include <tuple>

#include "core/onednn_engine.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::RandomModel;
using testing::RandomVector;
using testing::RelativeL2;

using testing::Batch;
using testing::ExpectClose;
using testing::MixedBatch;

constexpr double kTolerance = 1e-5;

ModelConfig Config(Positional pos, Relevance rel, Normalization norm, bool proj) {
  return testing::SmallConfig(pos, rel, norm, proj);
}

using testing::Combo;

class EngineVsReference : public ::testing::TestWithParam<Combo> {};

TEST_P(EngineVsReference, MixedBatchMatches) {
  const auto [pos, rel, norm, proj] = GetParam();
  auto model = RandomModel(Config(pos, rel, norm, proj), 7);
  auto reference = CreateReferenceEngine(model);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Batch batch = MixedBatch(32, 300, 11);
  auto want = (*reference)->Run(batch.seqs);
  auto got = (*engine)->Run(batch.seqs);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectClose(*got, *want, kTolerance);
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, EngineVsReference,
                         ::testing::ValuesIn(testing::AllCombos()),
                         testing::ComboName);

// A sequence's result does not depend on what else is in its batch.
TEST(OneDnnEngine, ResultsDoNotDependOnBatchComposition) {
  auto model = RandomModel(Config(Positional::kRotary, Relevance::kDot,
                                  Normalization::kSoftmax, true), 3);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  const Batch batch = MixedBatch(32, 200, 5);
  auto together = (*engine)->Run(batch.seqs);
  ASSERT_TRUE(together.ok());
  for (size_t s = 0; s < batch.seqs.size(); s += 7) {
    auto alone = (*engine)->Run(std::span(&batch.seqs[s], 1));
    ASSERT_TRUE(alone.ok());
    ExpectClose(*alone, {(*together)[s]}, 1e-6);
  }
}

TEST(OneDnnEngine, WiderHeadsAndLongSequence) {
  ModelConfig c = Config(Positional::kSinusoidal, Relevance::kDot,
                         Normalization::kSoftmax, true);
  c.d_model = 128;
  c.num_heads = 2;  // d_head 64, as in the real models
  c.max_length = 1100;
  c.scale = 0.125;
  auto model = RandomModel(c, 9);
  auto reference = CreateReferenceEngine(model);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok() && reference.ok());
  std::mt19937 rng(1);
  const std::vector<float> x = RandomVector(rng, 1100 * 128, 1.0f);
  SequenceInput s{x, 1100, {}, WeightsMode::kMean, Pooling::kNone, {}, false};
  s.mask.causal = true;
  auto want = (*reference)->Run(std::span(&s, 1));
  auto got = (*engine)->Run(std::span(&s, 1));
  ASSERT_TRUE(want.ok() && got.ok());
  ExpectClose(*got, *want, kTolerance);
}

TEST(OneDnnEngine, RowWithNoAllowedKeyIsZero) {
  auto model = RandomModel(Config(Positional::kNone, Relevance::kDot,
                                  Normalization::kSoftmax, true), 4);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  std::mt19937 rng(2);
  const std::vector<float> x = RandomVector(rng, 4 * 32, 1.0f);
  // Row 0 may only see key 3, but causal forbids it; row 2 has no edge.
  SequenceInput s{x, 4, {}, WeightsMode::kPerHead, Pooling::kNone, {}, false};
  s.mask.causal = true;
  s.mask.edges = {0, 3, 1, 0, 1, 1, 3, 2};
  auto got = (*engine)->Run(std::span(&s, 1));
  ASSERT_TRUE(got.ok()) << got.status();
  for (uint32_t row : {0u, 2u}) {
    for (const auto& w : (*got)[0].attention) {
      for (int j = 0; j < 4; ++j) EXPECT_EQ(w[row * 4 + j], 0.0f);
    }
    // Zero context: the output row is the output projection's bias.
    for (int k = 0; k < 32; ++k) {
      EXPECT_NEAR((*got)[0].output[row * 32 + k], model->weights.out_bias[k], 1e-6);
    }
  }
  for (const auto& w : (*got)[0].attention) {  // row 1 sees keys 0 and 1
    EXPECT_NEAR(w[4] + w[5], 1.0f, 1e-6);
  }
}

// Weights matrices are not zero-filled before the engine writes them: every
// entry outside a row's allowed keys must still come out exactly 0, also when
// the allocation reuses memory that held earlier (non-zero) weights.
TEST(OneDnnEngine, MaskedWeightsAreExactZerosInReusedMemory) {
  auto model = RandomModel(Config(Positional::kNone, Relevance::kDot,
                                  Normalization::kSoftmax, true), 4);
  OneDnnEngineOptions options;
  options.score_block_floats = 64 * 16;  // blocks of 8 rows: many partial key ranges
  auto engine = OneDnnEngine::Create(model, options);
  ASSERT_TRUE(engine.ok());
  constexpr uint32_t L = 150;
  std::mt19937 rng(9);
  const std::vector<float> x = RandomVector(rng, L * 32, 1.0f);
  for (WeightsMode mode : {WeightsMode::kPerHead, WeightsMode::kMean}) {
    for (int round = 0; round < 3; ++round) {
      {  // Dense weights everywhere, then freed: their memory is reused below.
        SequenceInput dense{x, L, {}, mode, Pooling::kNone, {}, false};
        ASSERT_TRUE((*engine)->Run(std::span(&dense, 1)).ok());
      }
      SequenceInput s{x, L, {}, mode, Pooling::kNone, {}, false};
      s.mask.causal = round != 1;
      s.mask.window = round == 0 ? 0 : 20;
      auto got = (*engine)->Run(std::span(&s, 1));
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ((*got)[0].attention.size(), mode == WeightsMode::kMean ? 1u : 4u);
      for (const auto& w : (*got)[0].attention) {
        ASSERT_EQ(w.size(), size_t{L} * L);
        for (uint32_t i = 0; i < L; ++i) {
          const uint32_t lo = s.mask.window != 0 && i > s.mask.window ? i - s.mask.window : 0;
          const uint32_t hi = std::min(s.mask.causal ? i + 1 : L,
                                       s.mask.window != 0 ? i + s.mask.window + 1 : L);
          double sum = 0;
          for (uint32_t j = 0; j < L; ++j) {
            if (j < lo || j >= hi) {
              ASSERT_EQ(w[i * L + j], 0.0f) << "round " << round << " row " << i << " key " << j;
            }
            sum += w[i * L + j];
          }
          EXPECT_NEAR(sum, 1.0, 1e-5) << "round " << round << " row " << i;
        }
      }
    }
  }
}

TEST(OneDnnEngine, SteadyStateCreatesNoPrimitives) {
  auto model = RandomModel(Config(Positional::kNone, Relevance::kDot,
                                  Normalization::kSoftmax, true), 5);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  const uint64_t after_create = (*engine)->primitives_created();
  EXPECT_GT(after_create, 0u);
  for (uint32_t seed = 0; seed < 4; ++seed) {  // new shapes every time
    const Batch batch = MixedBatch(32, 50 + 40 * seed, seed);
    ASSERT_TRUE((*engine)->Run(batch.seqs).ok());
  }
  EXPECT_EQ((*engine)->primitives_created(), after_create);
}

TEST(OneDnnEngine, ThreadCountDoesNotChangeResults) {
  auto model = RandomModel(Config(Positional::kLearned, Relevance::kAdditive,
                                  Normalization::kRelu, true), 6);
  auto one = OneDnnEngine::Create(model, {.num_threads = 1});
  auto two = OneDnnEngine::Create(model, {.num_threads = 2});
  ASSERT_TRUE(one.ok() && two.ok());
  const Batch batch = MixedBatch(32, 120, 8);
  auto a = (*one)->Run(batch.seqs);
  auto b = (*two)->Run(batch.seqs);
  ASSERT_TRUE(a.ok() && b.ok());
  ExpectClose(*a, *b, 1e-6);
}

// Create sets the engine up (weight reorders) on the calling thread alone: a
// parallel region there would give that thread an OpenMP pool of its own
// beside the one of the thread that runs batches, and with more pooled
// threads than CPUs libgomp stops spinning between regions (every region of
// every batch then wakes its workers through the kernel). The caller's
// thread count is left as it was, and the engine still runs on it.
TEST(OneDnnEngine, CreateStartsNoOpenMpThreadsAndLeavesTheCallersCountAlone) {
  auto model = RandomModel(Config(Positional::kRotary, Relevance::kDot,
                                  Normalization::kSoftmax, true), 9);
  auto tasks = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                         std::filesystem::directory_iterator{});
  };
  // A fresh thread has no pool yet, whatever this test program ran before.
  // It asks for two threads explicitly, so a pool would have a worker even
  // on one CPU.
  std::thread([&] {
    omp_set_num_threads(2);
    const auto before = tasks();
    auto engine = OneDnnEngine::Create(model);  // num_threads 0: the caller's 2
    ASSERT_TRUE(engine.ok());
    EXPECT_EQ(tasks(), before) << "Create started OpenMP threads on the calling thread";
    EXPECT_EQ(omp_get_max_threads(), 2);
    EXPECT_TRUE((*engine)->Run(MixedBatch(32, 40, 9).seqs).ok());
  }).join();
}

TEST(OneDnnEngine, InvalidSequencesAreRejected) {
  auto model = RandomModel(Config(Positional::kSinusoidal, Relevance::kDot,
                                  Normalization::kSoftmax, true), 1);
  auto engine = OneDnnEngine::Create(model);
  auto reference = CreateReferenceEngine(model);
  ASSERT_TRUE(engine.ok() && reference.ok());
  std::vector<float> x(3 * 32, 0.5f), nan_x = x, long_x(301 * 32, 0.1f);
  nan_x[40] = std::nanf("");
  struct Case {
    SequenceInput seq;
    absl::StatusCode code;
    std::string needle;
  };
  auto seq = [](std::span<const float> data, uint32_t length, std::vector<uint32_t> edges = {}) {
    SequenceInput s;
    s.data = data;
    s.length = length;
    s.mask.edges = std::move(edges);
    return s;
  };
  const std::vector<Case> cases = {
      {seq(std::span(x).first(0), 0), absl::StatusCode::kInvalidArgument, "empty"},
      {seq(std::span(x).first(95), 3), absl::StatusCode::kInvalidArgument, "expected rows * d_model"},
      {seq(nan_x, 3), absl::StatusCode::kInvalidArgument, "row 1, column 8 is not finite"},
      {seq(x, 3, {0, 1, 2}), absl::StatusCode::kInvalidArgument, "even count"},
      {seq(x, 3, {0, 3}), absl::StatusCode::kInvalidArgument, "j = 3"},
      {seq(long_x, 301), absl::StatusCode::kOutOfRange, "max_length 300"},
  };
  for (const Case& c : cases) {
    for (Engine* e : {static_cast<Engine*>(engine->get()), reference->get()}) {
      // A bad sequence after a good one fails the batch and names its index.
      const std::vector<SequenceInput> batch = {seq(x, 3), c.seq};
      auto r = e->Run(batch);
      ASSERT_FALSE(r.ok()) << c.needle;
      EXPECT_EQ(r.status().code(), c.code) << r.status();
      EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status();
      EXPECT_NE(r.status().message().find("sequence 1"), std::string::npos) << r.status();
    }
  }
}

// A caller-provided output buffer receives exactly what SequenceOutput::output
// would have held (every pooling, both engines), and one of the wrong size is
// rejected before anything is computed.
TEST(Engines, OutputBufferReceivesTheOutput) {
  auto model = RandomModel(Config(Positional::kNone, Relevance::kDot,
                                  Normalization::kSoftmax, true), 5);
  auto engine = OneDnnEngine::Create(model);
  auto reference = CreateReferenceEngine(model);
  ASSERT_TRUE(engine.ok() && reference.ok());
  std::mt19937 rng(5);
  const std::vector<float> x = RandomVector(rng, 9 * 32, 1.0f);
  for (Engine* e : {static_cast<Engine*>(engine->get()), reference->get()}) {
    for (Pooling pooling : {Pooling::kNone, Pooling::kMean, Pooling::kFirst}) {
      SequenceInput plain{x, 9, {}, WeightsMode::kMean, pooling, {}, false};
      const uint32_t rows = pooling == Pooling::kNone ? 9 : 1;
      std::vector<float> buffer(rows * 32, -7.0f);
      SequenceInput direct = plain;
      direct.output_buffer = buffer;
      const std::vector<SequenceInput> batch = {plain, direct};
      auto out = e->Run(batch);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ((*out)[1].rows, rows);
      EXPECT_TRUE((*out)[1].output.empty());
      EXPECT_EQ(buffer, (*out)[0].output);
      EXPECT_EQ((*out)[1].attention, (*out)[0].attention);

      std::vector<float> short_buffer(rows * 32 - 1);
      direct.output_buffer = short_buffer;
      auto bad = e->Run(std::span(&direct, 1));
      ASSERT_FALSE(bad.ok());
      EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(bad.status().message().find("output buffer holds"), std::string::npos)
          << bad.status();
    }
  }
}

// values_checked skips only the scan for non-finite values (the caller vouches
// for them); the checks that guard memory still run.
TEST(Engines, ValuesCheckedSkipsOnlyTheValueScan) {
  auto model = RandomModel(Config(Positional::kNone, Relevance::kDot,
                                  Normalization::kSoftmax, true), 6);
  std::vector<float> x(3 * 32, 0.5f);
  x[7] = std::nanf("");
  SequenceInput s{x, 3, {}, WeightsMode::kNone, Pooling::kNone, {}, false};
  EXPECT_EQ(ValidateSequence(model->config, s).code(), absl::StatusCode::kInvalidArgument);
  s.values_checked = true;
  EXPECT_TRUE(ValidateSequence(model->config, s).ok());
  s.mask.edges = {0, 3};
  EXPECT_EQ(ValidateSequence(model->config, s).code(), absl::StatusCode::kInvalidArgument);
  s.mask.edges.clear();
  s.data = std::span(x).first(95);
  EXPECT_EQ(ValidateSequence(model->config, s).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve::core
