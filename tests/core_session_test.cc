// Streaming sessions in the engine: a sequence fed a chunk at a time through
// a KvCache gives, for every chunk, the last rows of a one-shot computation
// of the whole sequence so far with {causal, window}: its outputs against the
// reference engine, its weights (chunk rows x the keys it may see) against
// the matching block of the one-shot weights. For every model kind (positional
// x relevance x normalization x projections), windows of 1, a few rows,
// unbounded and longer than the stream, chunks of one row, of many rows and
// longer than the window. Plus positions past max_length (rotary and none),
// the session rules' errors, a failed batch leaving the cache untouched, many
// sessions and ordinary sequences in one batch, and bf16.
//
// Tolerance: 1e-5 relative L2 against the reference engine, as in
// core_engine_test (the chunk's arithmetic is the one-shot's, restricted to
// its rows: the same dot products over the same keys).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <tuple>
#include <vector>

#include "core/attention_plan.h"
#include "core/onednn_engine.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using testing::RandomModel;
using testing::RandomVector;
using testing::RelativeL2;

constexpr double kTolerance = 1e-5;
constexpr double kBf16Tolerance = 2e-2;  // core_bf16_test's

struct Chunked {
  uint32_t window;
  std::vector<uint32_t> chunks;  // rows per chunk, in order
  WeightsMode weights;
};

// The rows [begin, end) of a one-shot output (L x d).
std::vector<float> Rows(const std::vector<float>& m, size_t d, size_t begin, size_t end) {
  return std::vector<float>(m.begin() + begin * d, m.begin() + end * d);
}

// The block [r0, r1) x [c0, c1) of an L x L matrix.
std::vector<float> Block(const WeightsMatrix& m, size_t L, size_t r0, size_t r1, size_t c0,
                         size_t c1) {
  std::vector<float> out;
  for (size_t r = r0; r < r1; ++r) {
    out.insert(out.end(), m.begin() + r * L + c0, m.begin() + r * L + c1);
  }
  return out;
}

// The weights' error: ||a - b|| / max(||b||, 1). A chunk's block can be a
// single row of two ReLU weights near 0, where fp32's absolute error of a
// score (~1e-7) is over 1e-5 of the block's norm; rows of softmax weights
// have norms of order 1, where this is the relative error.
double WeightsError(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return 1;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1.0);
}

// Streams `data` (total x d) through a session of `plan` on `engine` and
// checks every chunk against `oracle` run on the whole prefix; returns the
// largest error.
double StreamAndCompare(Engine& engine, Engine& oracle, const std::vector<float>& data,
                        const Chunked& plan, double tol) {
  const ModelConfig& c = engine.model().config;
  const size_t d = c.d_model;
  const uint32_t total = static_cast<uint32_t>(data.size() / d);
  const uint32_t capacity = plan.window == 0 ? total : plan.window;
  KvCache cache(capacity, engine.KvRowBytes());
  double worst = 0;
  uint32_t position = 0;
  for (uint32_t n : plan.chunks) {
    SCOPED_TRACE(::testing::Message() << "window " << plan.window << ", chunk of " << n
                                      << " at position " << position);
    SequenceInput chunk;
    chunk.data = std::span<const float>(data).subspan(position * d, n * d);
    chunk.length = n;
    chunk.mask.causal = true;
    chunk.mask.window = plan.window;
    chunk.weights = plan.weights;
    chunk.cache = &cache;
    const uint32_t keys = KeyCount(chunk);
    auto got = engine.Run({&chunk, 1});
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return 1;
    EXPECT_EQ(cache.positions(), position + n);

    SequenceInput whole;
    whole.data = std::span<const float>(data).subspan(0, (position + n) * d);
    whole.length = position + n;
    whole.mask.causal = true;
    whole.mask.window = plan.window;
    whole.weights = plan.weights;
    auto want = oracle.Run({&whole, 1});
    EXPECT_TRUE(want.ok()) << want.status();
    if (!want.ok()) return 1;
    const SequenceOutput& g = (*got)[0];
    const SequenceOutput& w = (*want)[0];
    EXPECT_EQ(g.rows, n);
    const double e = RelativeL2(g.output, Rows(w.output, d, position, position + n));
    EXPECT_LE(e, tol);
    worst = std::max(worst, e);
    EXPECT_EQ(g.attention.size(), w.attention.size());
    for (size_t m = 0; m < std::min(g.attention.size(), w.attention.size()); ++m) {
      EXPECT_EQ(g.attention[m].size(), size_t{n} * keys);
      const size_t L = position + n;
      const double ew = WeightsError(g.attention[m], Block(w.attention[m], L, position, L,
                                                           L - keys, L));
      EXPECT_LE(ew, tol) << "weights matrix " << m;
      worst = std::max(worst, ew);
      // Keys before the chunk's first visible one are masked in the one-shot.
      for (size_t r = position; r < L; ++r) {
        for (size_t j = 0; j < L - keys; ++j) EXPECT_EQ(w.attention[m][r * L + j], 0.0f);
      }
    }
    position += n;
  }
  return worst;
}

class SessionExactness : public ::testing::TestWithParam<testing::Combo> {};

TEST_P(SessionExactness, EveryChunkEqualsTheOneShotRowsForEveryWindowAndChunking) {
  const auto [pos, rel, norm, proj] = GetParam();
  auto model = RandomModel(testing::SmallConfig(pos, rel, norm, proj), 7);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto oracle = CreateReferenceEngine(model);
  ASSERT_TRUE(oracle.ok());
  std::mt19937 rng(11);
  const std::vector<Chunked> plans = {
      {1, std::vector<uint32_t>(12, 1), WeightsMode::kPerHead},    // W = 1, one row at a time
      {5, {3, 1, 7, 2, 9, 4, 1, 6}, WeightsMode::kNone},           // chunks around W
      {4, {2, 3, 11, 1, 2, 5, 2, 3, 4, 2, 3, 1, 4}, WeightsMode::kMean},  // 43 rows: 10 x W
      {0, {4, 1, 9, 6}, WeightsMode::kPerHead},                    // unbounded causal
      {200, {5, 17, 3}, WeightsMode::kNone},                       // W longer than the stream
      {3, {30, 4, 1}, WeightsMode::kNone},       // a chunk of 10 x W, then the ring it left
      {1, {1, 2, 1, 3, 1, 1}, WeightsMode::kNone},  // W = 1 read from the ring
  };
  for (const Chunked& plan : plans) {
    uint32_t total = 0;
    for (uint32_t n : plan.chunks) total += n;
    const std::vector<float> data = RandomVector(rng, size_t{total} * model->config.d_model, 1.0f);
    StreamAndCompare(**engine, **oracle, data, plan, kTolerance);
  }
}

INSTANTIATE_TEST_SUITE_P(AllModels, SessionExactness, ::testing::ValuesIn(testing::AllCombos()),
                         testing::ComboName);

// The default block sizes on longer chunks: a chunk of 300 rows over a full
// window of 256 takes several row blocks and the materialized path, a
// 1-row chunk the smallest task.
TEST(SessionTest, LongChunksOverAFullWindowEqualTheOneShot) {
  auto model = RandomModel(testing::SmallConfig(Positional::kRotary, Relevance::kDot,
                                                Normalization::kSoftmax, true, 2000),
                           3);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  auto oracle = CreateReferenceEngine(model);
  std::mt19937 rng(5);
  const std::vector<float> data = RandomVector(rng, size_t{857} * 32, 1.0f);
  StreamAndCompare(**engine, **oracle, data, {256, {300, 256, 1, 300}, WeightsMode::kNone},
                   kTolerance);
}

// Rotary and no positions go on past max_length in a session. The one-shot
// cannot (OUT_OF_RANGE), but both encodings are shift-invariant (rotary
// scores depend on i - j only), so each chunk equals the last rows of the
// one-shot over just the rows it can see, counted from 0.
TEST(SessionTest, RotaryAndNoPositionsGoOnPastMaxLength) {
  for (Positional pos : {Positional::kRotary, Positional::kNone}) {
    SCOPED_TRACE(std::string(ToString(pos)));
    auto model = RandomModel(
        testing::SmallConfig(pos, Relevance::kDot, Normalization::kSoftmax, true, 16), 9);
    auto engine = OneDnnEngine::Create(model);
    ASSERT_TRUE(engine.ok());
    auto oracle = CreateReferenceEngine(model);
    constexpr uint32_t kWindow = 4, kChunk = 3, kChunks = 40;  // 120 rows, max_length 16
    std::mt19937 rng(2);
    const std::vector<float> data = RandomVector(rng, size_t{kChunk} * kChunks * 32, 1.0f);
    KvCache cache(kWindow, (*engine)->KvRowBytes());
    for (uint32_t c = 0; c < kChunks; ++c) {
      const uint32_t position = c * kChunk;
      SequenceInput chunk;
      chunk.data = std::span<const float>(data).subspan(position * 32, kChunk * 32);
      chunk.length = kChunk;
      chunk.mask = {.causal = true, .window = kWindow, .edges = {}};
      chunk.cache = &cache;
      auto got = (*engine)->Run({&chunk, 1});
      ASSERT_TRUE(got.ok()) << got.status();
      const uint32_t seen = std::min(position, kWindow);  // cached rows it attends over
      SequenceInput tail;
      tail.data = std::span<const float>(data).subspan((position - seen) * 32, (seen + kChunk) * 32);
      tail.length = seen + kChunk;
      tail.mask = {.causal = true, .window = kWindow, .edges = {}};
      auto want = (*oracle)->Run({&tail, 1});
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_LE(RelativeL2((*got)[0].output, Rows((*want)[0].output, 32, seen, seen + kChunk)),
                kTolerance)
          << "chunk " << c << " at position " << position;
    }
    EXPECT_EQ(cache.positions(), kChunk * kChunks);
  }
}

SequenceInput Chunk(std::span<const float> data, uint32_t n, uint32_t window, KvCache* cache) {
  SequenceInput s;
  s.data = data.subspan(0, size_t{n} * 32);
  s.length = n;
  s.mask = {.causal = true, .window = window, .edges = {}};
  s.cache = cache;
  return s;
}

TEST(SessionTest, TheSessionRulesAreCheckedAndAFailedBatchLeavesTheCacheAsItWas) {
  auto model = RandomModel(testing::SmallConfig(Positional::kSinusoidal, Relevance::kDot,
                                                Normalization::kSoftmax, true, 20),
                           1);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  std::mt19937 rng(1);
  const std::vector<float> data = RandomVector(rng, 32 * 32, 1.0f);
  KvCache cache(8, (*engine)->KvRowBytes());
  ASSERT_TRUE((*engine)->Run(std::vector{Chunk(data, 5, 8, &cache)}).ok());
  ASSERT_EQ(cache.positions(), 5u);

  auto expect = [&](SequenceInput s, absl::StatusCode code, const std::string& words) {
    auto r = (*engine)->Run({&s, 1});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(std::string(r.status().message()).find(words), std::string::npos) << r.status();
    EXPECT_EQ(cache.positions(), 5u) << "a refused chunk must not advance its session";
  };
  SequenceInput s = Chunk(data, 2, 8, &cache);
  s.mask.causal = false;
  expect(s, absl::StatusCode::kInvalidArgument, "causal");
  s = Chunk(data, 2, 8, &cache);
  s.mask.edges = {0, 0};
  expect(s, absl::StatusCode::kInvalidArgument, "edges");
  s = Chunk(data, 2, 8, &cache);
  s.pooling = Pooling::kMean;
  expect(s, absl::StatusCode::kInvalidArgument, "pooled");
  // A cache shorter than the window must never wrap: 5 + 4 > 8.
  expect(Chunk(data, 4, 9, &cache), absl::StatusCode::kOutOfRange, "fewer than window 9");
  // Sinusoidal positions end at max_length 20: rows 5..20 would pass it.
  expect(Chunk(data, 16, 8, &cache), absl::StatusCode::kOutOfRange, "max_length 20");
  KvCache wrong(8, (*engine)->KvRowBytes() / 2);
  SequenceInput w = Chunk(data, 2, 8, &wrong);
  auto r = (*engine)->Run({&w, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // A bad sequence elsewhere in the batch fails the batch: nothing advances.
  SequenceInput bad;
  bad.data = std::span<const float>(data).subspan(0, 31);
  bad.length = 1;
  r = (*engine)->Run(std::vector{Chunk(data, 2, 8, &cache), bad});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.positions(), 5u);
  // Window 0 keeps every row: past its capacity is OUT_OF_RANGE.
  KvCache all(6, (*engine)->KvRowBytes());
  ASSERT_TRUE((*engine)->Run(std::vector{Chunk(data, 4, 0, &all)}).ok());
  auto over = (*engine)->Run(std::vector{Chunk(data, 3, 0, &all)});
  EXPECT_EQ(over.status().code(), absl::StatusCode::kOutOfRange) << over.status();
  EXPECT_EQ(all.positions(), 4u);
  EXPECT_TRUE((*engine)->Run(std::vector{Chunk(data, 2, 0, &all)}).ok());

  auto oracle = CreateReferenceEngine(model);
  SequenceInput c = Chunk(data, 1, 8, &cache);
  EXPECT_EQ((*oracle)->Run({&c, 1}).status().code(), absl::StatusCode::kUnimplemented);
}

// Chunks of many sessions (some with cached keys, some opening) and ordinary
// sequences in one batch give what each gives alone.
TEST(SessionTest, ManySessionsAndOrdinarySequencesShareABatch) {
  auto model = RandomModel(testing::SmallConfig(Positional::kLearned, Relevance::kDot,
                                                Normalization::kSoftmax, true),
                           4);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  std::mt19937 rng(8);
  constexpr int kSessions = 6;
  std::vector<std::vector<float>> streams;
  for (int s = 0; s < kSessions; ++s) streams.push_back(RandomVector(rng, 60 * 32, 1.0f));
  const std::vector<float> plain = RandomVector(rng, 50 * 32, 1.0f);
  std::vector<std::unique_ptr<KvCache>> together, alone;
  for (int s = 0; s < kSessions; ++s) {
    const uint32_t window = s == 0 ? 0 : 3 * s;
    together.push_back(std::make_unique<KvCache>(window == 0 ? 60 : window, (*engine)->KvRowBytes()));
    alone.push_back(std::make_unique<KvCache>(window == 0 ? 60 : window, (*engine)->KvRowBytes()));
  }
  std::vector<uint32_t> at(kSessions, 0);
  for (int round = 0; round < 5; ++round) {
    std::vector<SequenceInput> batch;
    std::vector<std::vector<SequenceOutput>> each;
    for (int s = 0; s < kSessions; ++s) {
      if ((round + s) % 3 == 0) continue;  // not every session in every batch
      const uint32_t n = 1 + (round * 7 + s * 5) % 9;
      const uint32_t window = s == 0 ? 0 : 3 * s;
      SequenceInput t = Chunk(std::span<const float>(streams[s]).subspan(at[s] * 32), n, window,
                              together[s].get());
      t.weights = s % 2 == 0 ? WeightsMode::kPerHead : WeightsMode::kNone;
      SequenceInput a = t;
      a.cache = alone[s].get();
      auto r = (*engine)->Run({&a, 1});
      ASSERT_TRUE(r.ok()) << r.status();
      each.push_back(*std::move(r));
      batch.push_back(t);
      at[s] += n;
    }
    SequenceInput p;
    p.data = plain;
    p.length = 50;
    p.mask.window = 4;
    p.weights = WeightsMode::kMean;
    auto pa = (*engine)->Run({&p, 1});
    ASSERT_TRUE(pa.ok());
    const size_t mid = batch.size() / 2;  // the ordinary sequence between the chunks
    batch.insert(batch.begin() + mid, p);
    each.insert(each.begin() + mid, *std::move(pa));
    auto r = (*engine)->Run(batch);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->size(), each.size());
    for (size_t i = 0; i < each.size(); ++i) {
      SCOPED_TRACE(::testing::Message() << "round " << round << ", sequence " << i);
      EXPECT_LE(RelativeL2((*r)[i].output, each[i][0].output), 1e-6);
      ASSERT_EQ((*r)[i].attention.size(), each[i][0].attention.size());
      for (size_t m = 0; m < each[i][0].attention.size(); ++m) {
        EXPECT_LE(RelativeL2((*r)[i].attention[m], each[i][0].attention[m]), 1e-6);
      }
    }
  }
  for (int s = 0; s < kSessions; ++s) EXPECT_EQ(together[s]->positions(), alone[s]->positions());
}

// Other thread counts and small tiles: a ring run split into several key
// tiles (37 keys, so tiles straddle every boundary), chunks' rows split
// between 3 threads, and one thread.
TEST(SessionTest, ThreadCountsAndSmallTilesGiveTheSameRows) {
  auto model = RandomModel(testing::SmallConfig(Positional::kRotary, Relevance::kDot,
                                                Normalization::kSoftmax, true),
                           12);
  auto oracle = CreateReferenceEngine(model);
  std::mt19937 rng(13);
  const std::vector<float> data = RandomVector(rng, 260 * 32, 1.0f);
  for (const OneDnnEngineOptions& options :
       {OneDnnEngineOptions{.num_threads = 1},
        OneDnnEngineOptions{.num_threads = 3, .score_block_floats = 64 * 64, .key_tile = 37,
                            .block_rows = 64}}) {
    SCOPED_TRACE(::testing::Message() << options.num_threads << " thread(s)");
    auto engine = OneDnnEngine::Create(model, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    StreamAndCompare(**engine, **oracle, data, {100, {40, 17, 1, 90, 33, 79}, WeightsMode::kNone},
                     kTolerance);
  }
}

// The plan of chunks whose heads are computed together: one task of every
// head per row block, a lone chunk's rows split between the threads (not
// below min_rows), several chunks one task each, sequences beside them
// planned as before.
TEST(SessionTest, BatchedChunksArePlannedOneTaskPerRowBlock) {
  KvCache cache(64, 8), other(64, 8), third(64, 8);
  for (KvCache* c : {&cache, &other, &third}) c->Advance(40);
  std::vector<float> data(64 * 32);
  auto chunk = [&](KvCache* c, uint32_t n) {
    SequenceInput s;
    s.data = std::span<const float>(data).subspan(0, n * 32);
    s.length = n;
    s.mask = {.causal = true, .window = 64, .edges = {}};
    s.cache = c;
    return s;
  };
  PlanOptions options;
  options.batch_ring_heads = true;
  options.threads = 2;
  options.min_tasks = 8;
  const std::vector<SequenceInput> lone = {chunk(&cache, 16)};
  AttentionPlan plan = MakeAttentionPlan(lone, 4, options);
  ASSERT_EQ(plan.tasks.size(), 2u);
  for (const AttentionTask& t : plan.tasks) {
    EXPECT_EQ(t.head_end - t.head_begin, 4u);
    EXPECT_EQ(t.row_end - t.row_begin, 8u);
    EXPECT_TRUE(t.ring);
  }
  EXPECT_GE(plan.max_rows, 8u * 4);  // stats for every head's rows
  options.threads = 8;               // 16 rows in 8 parts: not below min_rows (8)
  EXPECT_EQ(MakeAttentionPlan(lone, 4, options).tasks.size(), 2u);
  options.threads = 0;  // taken as 1
  EXPECT_EQ(MakeAttentionPlan(lone, 4, options).tasks.size(), 1u);
  options.threads = 2;
  SequenceInput plain;
  plain.data = std::span<const float>(data).subspan(0, 10 * 32);
  plain.length = 10;
  const std::vector<SequenceInput> mixed = {chunk(&cache, 16), chunk(&other, 5), plain,
                                            chunk(&third, 3)};
  plan = MakeAttentionPlan(mixed, 4, options);
  size_t per_head = 0, batched = 0;
  for (const AttentionTask& t : plan.tasks) {
    if (t.head_end - t.head_begin == 4) {
      ++batched;
      EXPECT_TRUE(t.ring);
    } else {
      ++per_head;
      EXPECT_EQ(t.seq, 2u);
    }
  }
  EXPECT_EQ(batched, 3u);   // one task per chunk: more chunks than threads
  EXPECT_EQ(per_head, 4u);  // the plain sequence: one block, a task per head
  options.batch_ring_heads = false;  // off: per head, as every other sequence
  EXPECT_EQ(MakeAttentionPlan(mixed, 4, options).tasks.size(), 4u * 4);
}

// bf16: the cache holds bf16 keys and values where the attention is bf16;
// chunks against the same engine's one-shot within bf16's tolerance.
TEST(SessionTest, Bf16SessionsMatchTheOneShot) {
  ModelConfig config = testing::SmallConfig(Positional::kRotary, Relevance::kDot,
                                            Normalization::kSoftmax, true);
  config.precision = Precision::kBf16;
  auto model = RandomModel(config, 6);
  auto engine = OneDnnEngine::Create(model);
  ASSERT_TRUE(engine.ok());
  auto oracle = CreateReferenceEngine(model);
  std::mt19937 rng(3);
  const std::vector<float> data = RandomVector(rng, 70 * 32, 1.0f);
  const double worst = StreamAndCompare(**engine, **oracle, data,
                                        {16, {5, 20, 1, 30, 14}, WeightsMode::kPerHead},
                                        kBf16Tolerance);
  // Without weights: the cached keys read from the ring, every head at once.
  const double ring = StreamAndCompare(**engine, **oracle, data,
                                       {16, {5, 20, 1, 30, 14}, WeightsMode::kNone},
                                       kBf16Tolerance);
  RecordProperty("worst_relative_l2", std::to_string(std::max(worst, ring)));
  const bool bf16 = (*engine)->compute_path().rfind("bf16", 0) == 0;
  EXPECT_EQ((*engine)->KvRowBytes(), size_t{2} * 32 * (bf16 ? 2 : 4));
}

}  // namespace
}  // namespace attnserve::core
