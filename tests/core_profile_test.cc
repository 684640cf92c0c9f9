// The engine's stage profile (OneDnnEngineOptions::profile, which
// bench/core_bench --breakdown reads) and large outputs: the page allocator
// behind them (core::AllocatePages) and mapping their pages up front
// (OneDnnEngineOptions::prefault_bytes). The profile's figures are times, so the
// checks are on what must hold whatever the machine's speed: runs counted,
// every stage that ran has time, the stages fit in the total, nothing is
// counted when profiling is off, and taking the profile starts it afresh.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/onednn_engine.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::Batch;
using testing::RandomModel;

ModelConfig ProfileConfig() {
  return testing::SmallConfig(Positional::kSinusoidal, Relevance::kDot,
                              Normalization::kSoftmax, /*proj=*/true,
                              /*max_length=*/400);
}

// A small score budget: sequences over 64 tokens without weights stream their
// keys (the tiled path), as thousands-long ones do with the defaults.
constexpr OneDnnEngineOptions kProfiled{
    .num_threads = 2, .score_block_floats = 64 * 64, .key_tile = 64, .profile = true};

// One sequence with per-head weights and one that streams its keys, so every
// attention step runs.
Batch ProfileBatch(uint32_t d_model) {
  std::mt19937 rng(5);
  Batch b;
  b.Add(100, d_model, {}, WeightsMode::kPerHead, Pooling::kNone, rng);
  b.Add(300, d_model, {}, WeightsMode::kNone, Pooling::kMean, rng);
  b.Seal();
  return b;
}

TEST(EngineProfileTest, CountsEveryStageOfEveryRun) {
  const ModelConfig config = ProfileConfig();
  auto engine = OneDnnEngine::Create(RandomModel(config, 1), kProfiled);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Batch batch = ProfileBatch(config.d_model);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*engine)->Run(batch.seqs).ok());
  const EngineProfile p = (*engine)->TakeProfile();
  EXPECT_EQ(p.runs, 3u);
  EXPECT_EQ(p.threads, 2);
  for (double stage : {p.pack, p.qkv_projection, p.attention, p.out_projection, p.unpack,
                       p.scores, p.normalize, p.context}) {
    EXPECT_GT(stage, 0.0);
  }
  // The engine's stages run one after the other within the total...
  EXPECT_GE(p.other(), 0.0);
  EXPECT_LE(p.pack + p.qkv_projection + p.attention + p.out_projection + p.unpack, p.total);
  // ... and the attention steps' thread-seconds fit in its wall time on
  // every thread (plus clock granularity).
  EXPECT_LE(p.scores + p.normalize + p.context + p.weights_out,
            p.threads * p.attention * 1.01 + 1e-4);
  // Taken: the next profile starts from zero.
  const EngineProfile next = (*engine)->TakeProfile();
  EXPECT_EQ(next.runs, 0u);
  EXPECT_EQ(next.total, 0.0);
  EXPECT_EQ(next.scores, 0.0);
  EXPECT_EQ(next.threads, 2);
}

TEST(EngineProfileTest, CountsNothingWhenOff) {
  const ModelConfig config = ProfileConfig();
  OneDnnEngineOptions off = kProfiled;
  off.profile = false;
  auto engine = OneDnnEngine::Create(RandomModel(config, 1), off);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Batch batch = ProfileBatch(config.d_model);
  ASSERT_TRUE((*engine)->Run(batch.seqs).ok());
  const EngineProfile p = (*engine)->TakeProfile();
  EXPECT_EQ(p.runs, 0u);
  EXPECT_EQ(p.total, 0.0);
  EXPECT_EQ(p.attention, 0.0);
  EXPECT_EQ(p.scores + p.normalize + p.context + p.weights_out, 0.0);
}

// Large outputs get whole 2 MiB pages (so transparent huge pages can back
// them); small ones come from operator new. Both hold what is written.
TEST(AllocatePagesTest, LargeBuffersAreHugePageAlignedAndUsable) {
  for (size_t bytes : {kHugePageThreshold, kHugePageThreshold + 12345, size_t{64} << 20}) {
    void* p = AllocatePages(bytes, alignof(float));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (size_t{2} << 20), 0u) << bytes;
    std::memset(p, 0xab, bytes);
    EXPECT_EQ(static_cast<unsigned char*>(p)[bytes - 1], 0xab);
    FreePages(p, bytes, alignof(float));
  }
  void* small = AllocatePages(1000, 64);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % 64, 0u);
  std::memset(small, 1, 1000);
  FreePages(small, 1000, 64);
}

TEST(AllocatePagesTest, WeightsMatricesUseIt) {
  WeightsMatrix m(kHugePageThreshold / sizeof(float) + 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % (size_t{2} << 20), 0u);
  m.back() = 1.5f;
  WeightsMatrix copy = m;  // copies allocate through it too
  EXPECT_EQ(copy.back(), 1.5f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copy.data()) % (size_t{2} << 20), 0u);
}

// Weights large enough for AllocatePages' mapped pages, with their pages
// mapped up front (prefault_bytes = 0) or by the attention itself: the same
// weights either way, and the reference's.
TEST(LargeOutputsTest, PrefaultedWeightsEqualTheReference) {
  ModelConfig config = testing::SmallConfig(Positional::kNone, Relevance::kDot,
                                            Normalization::kSoftmax, true, 1100);
  config.num_heads = 2;
  config.scale = 1.0 / 4;
  const auto model = RandomModel(config, 3);
  constexpr uint32_t L = 1100;  // 1100^2 floats = 4.6 MiB per head
  static_assert(size_t{L} * L * sizeof(float) >= kHugePageThreshold);
  std::mt19937 rng(4);
  const std::vector<float> x = testing::RandomVector(rng, L * config.d_model, 1.0f);
  std::vector<SequenceInput> seqs(2, SequenceInput{x, L, {}, WeightsMode::kPerHead,
                                                   Pooling::kNone, {}, false});
  seqs[1].mask.causal = true;  // masked entries must be exact zeros too
  seqs[1].weights = WeightsMode::kMean;
  auto reference = CreateReferenceEngine(model);
  auto prefaulted = OneDnnEngine::Create(model, {.prefault_bytes = 0});
  auto in_place = OneDnnEngine::Create(model, {.prefault_bytes = SIZE_MAX});
  ASSERT_TRUE(reference.ok() && prefaulted.ok() && in_place.ok());
  auto want = (*reference)->Run(seqs);
  auto got = (*prefaulted)->Run(seqs);
  auto other = (*in_place)->Run(seqs);
  ASSERT_TRUE(want.ok() && got.ok() && other.ok());
  testing::ExpectClose(*got, *want, 1e-5);
  for (size_t s = 0; s < seqs.size(); ++s) {
    ASSERT_EQ((*got)[s].attention.size(), (*other)[s].attention.size());
    for (size_t h = 0; h < (*got)[s].attention.size(); ++h) {
      EXPECT_TRUE((*got)[s].attention[h] == (*other)[s].attention[h]) << s << " " << h;
    }
  }
  EXPECT_EQ((*got)[1].attention[0][1], 0.0f);  // row 0 sees only key 0
}

TEST(AllocatePagesTest, AnImpossibleSizeThrowsBadAlloc) {
  EXPECT_THROW(AllocatePages(size_t{1} << 62, alignof(float)), std::bad_alloc);
}

}  // namespace
}  // namespace attnserve::core
