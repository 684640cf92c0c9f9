// Exception safety of core: a ScratchBuffer whose growth fails is left empty
// (never a stale capacity over a freed pointer), and the oneDNN engine fails
// only the sequences it must: one sequence whose attention weights cannot be
// allocated (a real std::bad_alloc from the page allocator: L x L floats
// beyond the address space) gets RESOURCE_EXHAUSTED while the rest of its
// batch is computed and equals the reference, and the next batch is correct.
//
// Tolerance: relative L2 <= 1e-5, as in core_engine_test.cc.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <new>
#include <random>

#include "core/onednn_engine.h"
#include "core/scratch.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::Batch;
using testing::ExpectClose;
using testing::RandomModel;
using testing::RandomVector;

constexpr double kTolerance = 1e-5;

TEST(ScratchBufferTest, FailedGrowthLeavesAnEmptyUsableBuffer) {
  ScratchBuffer buffer;
  float* small = buffer.ReserveAs<float>(1000);
  ASSERT_NE(small, nullptr);
  small[999] = 1.0f;
  EXPECT_THROW(buffer.Reserve(size_t{1} << 62), std::bad_alloc);
  EXPECT_EQ(buffer.capacity(), 0u) << "capacity must not outlive the freed allocation";
  // The next use allocates afresh and the memory is writable end to end.
  float* again = buffer.ReserveAs<float>(2000);
  ASSERT_NE(again, nullptr);
  EXPECT_GE(buffer.capacity(), 2000 * sizeof(float));
  for (size_t i = 0; i < 2000; ++i) again[i] = static_cast<float>(i);
  EXPECT_EQ(again[1999], 1999.0f);
}

// A parameter-free model with d_model 2, so that an L whose L x L weights
// exceed the 128 TiB user address space still has a small input (L x 2).
std::shared_ptr<const Model> TinyModel() {
  ModelConfig c = testing::SmallConfig(Positional::kNone, Relevance::kDot,
                                       Normalization::kSoftmax, /*proj=*/false);
  c.d_model = 2;
  c.num_heads = 1;
  c.scale = 1.0 / std::sqrt(2.0);
  return RandomModel(c, 21);
}

TEST(OneDnnEngineFailureTest, OneSequenceOutOfMemoryFailsAloneAndTheNextBatchIsCorrect) {
  auto model = TinyModel();
  auto engine = OneDnnEngine::Create(model);
  auto reference = CreateReferenceEngine(model);
  ASSERT_TRUE(engine.ok() && reference.ok());
  std::mt19937 rng(4);
  // 6.1e6^2 floats = 149 TB of weights: mmap must fail (bad_alloc).
  constexpr uint32_t kHuge = 6'100'000;
  const std::vector<float> huge_input = RandomVector(rng, size_t{kHuge} * 2, 1.0f);
  Batch batch;
  batch.Add(40, 2, {}, WeightsMode::kPerHead, Pooling::kNone, rng);
  batch.Add(25, 2, {}, WeightsMode::kNone, Pooling::kMean, rng);
  batch.Seal();
  std::vector<SequenceInput> seqs = {batch.seqs[0],
                                     SequenceInput{huge_input, kHuge, {}, WeightsMode::kMean,
                                                   Pooling::kNone, {}, false},
                                     batch.seqs[1]};
  auto got = (*engine)->Run(seqs);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[1].status.code(), absl::StatusCode::kResourceExhausted) << (*got)[1].status;
  EXPECT_NE((*got)[1].status.message().find("out of memory"), std::string::npos);
  EXPECT_TRUE((*got)[1].attention.empty() && (*got)[1].output.empty());
  // The others were computed, as if alone.
  auto want = (*reference)->Run(batch.seqs);
  ASSERT_TRUE(want.ok());
  ASSERT_TRUE((*got)[0].status.ok() && (*got)[2].status.ok());
  ExpectClose({(*got)[0], (*got)[2]}, *want, kTolerance);
  // The engine is whole afterwards: a fresh mixed batch equals the reference.
  const Batch next = testing::MixedBatch(2, 120, 8);
  auto next_got = (*engine)->Run(next.seqs);
  auto next_want = (*reference)->Run(next.seqs);
  ASSERT_TRUE(next_got.ok() && next_want.ok());
  ExpectClose(*next_got, *next_want, kTolerance);
}

}  // namespace
}  // namespace attnserve::core
