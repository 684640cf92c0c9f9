// Golden tests: both engines against answers computed by PyTorch.
//
// tests/golden/data/<model>/ holds a model directory (config.json +
// weights.safetensors) and test cases (cases.json + cases.safetensors), all
// written by tests/golden/export_golden.py from torch.nn.MultiheadAttention
// evaluated in float64 (format in tests/golden/README.md). Each model is loaded
// through the real loader and every case runs through the reference engine and
// the oneDNN engine, alone and as one mixed batch of every case of the model.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/engine.h"
#include "core/model.h"
#include "core/onednn_engine.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using ::attnserve::testing::RelativeL2;
using ::attnserve::testing::SourcePath;

// Every model the export script writes. The directory scan must find exactly
// these, so a missing or renamed fixture fails instead of passing vacuously.
const std::vector<std::string> kModelNames = {
    "mha_learned_bf16", "mha_plain", "mha_sinusoidal_sep", "rotary_manual"};

// The fixtures are exact to ~1e-12 before their rounding to fp32 (~3e-8).
// The engines compute in fp32 with dot products of at most 64 terms and
// softmax over at most 24 keys: rounding error ~ eps * log2(K) ~ 1e-6
// relative. 1e-5 leaves a margin of ten over that while any semantic slip
// (a wrong position, head split, scale or mask) shows as 1e-3 or more.
constexpr double kTolerance = 1e-5;

std::string GoldenDir() { return SourcePath("tests/golden/data"); }

// One test case with its expected answer.
struct GoldenCase {
  std::string name;
  uint32_t length = 0;
  std::vector<float> input;  // length x d_model
  Mask mask;
  WeightsMode weights = WeightsMode::kNone;
  Pooling pooling = Pooling::kNone;
  uint32_t expected_rows = 0;            // length, or 1 when pooled
  std::vector<float> expected_output;    // expected_rows x d_model
  // One length x length matrix per head (kPerHead), one (kMean) or none.
  std::vector<std::vector<float>> expected_attention;

  SequenceInput AsInput() const {
    SequenceInput seq;
    seq.data = input;
    seq.length = length;
    seq.mask = mask;
    seq.weights = weights;
    seq.pooling = pooling;
    return seq;
  }
};

WeightsMode ParseWeights(const std::string& s) {
  if (s == "per_head") return WeightsMode::kPerHead;
  if (s == "mean") return WeightsMode::kMean;
  EXPECT_EQ(s, "none") << "unknown weights mode in cases.json";
  return WeightsMode::kNone;
}

Pooling ParsePooling(const std::string& s) {
  if (s == "mean") return Pooling::kMean;
  if (s == "first") return Pooling::kFirst;
  EXPECT_EQ(s, "none") << "unknown pooling in cases.json";
  return Pooling::kNone;
}

// Reads one case's tensors from `file`; shapes are checked by ReadF32.
void ReadCaseTensors(const SafetensorsFile& file, const nlohmann::json& j,
                     const ModelConfig& config, GoldenCase* c) {
  const int64_t d = config.d_model;
  const std::string input_name = j.at("input").get<std::string>();
  ASSERT_TRUE(file.Has(input_name)) << input_name;
  const std::vector<int64_t>& shape = file.tensors().at(input_name).shape;
  ASSERT_EQ(shape.size(), 2u) << input_name;
  ASSERT_GE(shape[0], 1) << input_name;
  c->length = static_cast<uint32_t>(shape[0]);
  const int64_t len = c->length;

  absl::StatusOr<std::vector<float>> input = file.ReadF32(input_name, {len, d});
  ASSERT_TRUE(input.ok()) << input.status();
  c->input = *std::move(input);

  c->expected_rows = c->pooling == Pooling::kNone ? c->length : 1;
  absl::StatusOr<std::vector<float>> output = file.ReadF32(
      j.at("output").get<std::string>(), {int64_t{c->expected_rows}, d});
  ASSERT_TRUE(output.ok()) << output.status();
  c->expected_output = *std::move(output);

  ASSERT_EQ(j.at("attention").is_null(), c->weights == WeightsMode::kNone)
      << c->name << ": attention tensor present iff weights != none";
  if (c->weights == WeightsMode::kNone) return;
  const int64_t mats = c->weights == WeightsMode::kPerHead ? config.num_heads : 1;
  absl::StatusOr<std::vector<float>> attention =
      file.ReadF32(j.at("attention").get<std::string>(), {mats, len, len});
  ASSERT_TRUE(attention.ok()) << attention.status();
  for (int64_t m = 0; m < mats; ++m) {
    const auto begin = attention->begin() + m * len * len;
    c->expected_attention.emplace_back(begin, begin + len * len);
  }
}

// Reads DIR/cases.json and DIR/cases.safetensors.
void LoadCases(const std::string& dir, const ModelConfig& config,
               std::vector<GoldenCase>* cases) {
  std::ifstream in(dir + "/cases.json");
  ASSERT_TRUE(in) << "cannot open " << dir << "/cases.json";
  const nlohmann::json doc = nlohmann::json::parse(in);
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(dir + "/cases.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();

  for (const nlohmann::json& j : doc.at("cases")) {
    GoldenCase c;
    c.name = j.at("name").get<std::string>();
    SCOPED_TRACE("case " + c.name);
    const nlohmann::json& mask = j.at("mask");
    c.mask.causal = mask.at("causal").get<bool>();
    c.mask.window = mask.at("window").get<uint32_t>();
    c.mask.edges = mask.at("edges").get<std::vector<uint32_t>>();
    c.weights = ParseWeights(j.at("weights").get<std::string>());
    c.pooling = ParsePooling(j.at("pooling").get<std::string>());
    ASSERT_NO_FATAL_FAILURE(ReadCaseTensors(*file, j, config, &c));
    cases->push_back(std::move(c));
  }
}

enum class EngineKind { kReference, kOneDnn };

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(
    EngineKind kind, std::shared_ptr<const Model> model) {
  if (kind == EngineKind::kReference) return CreateReferenceEngine(std::move(model));
  absl::StatusOr<std::unique_ptr<OneDnnEngine>> engine =
      OneDnnEngine::Create(std::move(model));
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<Engine>(*std::move(engine));
}

// Compares one engine output with the fixture; returns the largest relative
// L2 error seen (output or any attention matrix).
double ExpectMatches(const GoldenCase& c, const SequenceOutput& out) {
  SCOPED_TRACE("case " + c.name);
  EXPECT_EQ(out.rows, c.expected_rows);
  const double out_err = RelativeL2(out.output, c.expected_output);
  EXPECT_LE(out_err, kTolerance) << "output";
  double worst = out_err;
  EXPECT_EQ(out.attention.size(), c.expected_attention.size()) << "attention matrices";
  const size_t n = std::min(out.attention.size(), c.expected_attention.size());
  for (size_t m = 0; m < n; ++m) {
    const double err = RelativeL2(out.attention[m], c.expected_attention[m]);
    EXPECT_LE(err, kTolerance) << "attention matrix " << m;
    worst = std::max(worst, err);
  }
  return worst;
}

// For RecordProperty: std::to_string would print 1e-7 as 0.000000.
std::string Scientific(double x) {
  std::ostringstream out;
  out << std::scientific << x;
  return out.str();
}

// Parameter: (model name, engine).
class GoldenTest
    : public ::testing::TestWithParam<std::tuple<std::string, EngineKind>> {
 protected:
  void SetUp() override {
    const std::string dir = GoldenDir() + "/" + std::get<0>(GetParam());
    absl::StatusOr<Model> model = LoadModel(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_NO_FATAL_FAILURE(LoadCases(dir, model->config, &cases_));
    ASSERT_GT(cases_.size(), 0u) << "no cases in " << dir;
    model_ = std::make_shared<const Model>(*std::move(model));
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        MakeEngine(std::get<1>(GetParam()), model_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::shared_ptr<const Model> model_;
  std::vector<GoldenCase> cases_;  // inputs referenced by spans; never resized after SetUp
  std::unique_ptr<Engine> engine_;
};

TEST_P(GoldenTest, EachCaseAlone) {
  double worst = 0;
  for (const GoldenCase& c : cases_) {
    const SequenceInput seq = c.AsInput();
    absl::StatusOr<std::vector<SequenceOutput>> out = engine_->Run({&seq, 1});
    ASSERT_TRUE(out.ok()) << c.name << ": " << out.status();
    ASSERT_EQ(out->size(), 1u) << c.name;
    worst = std::max(worst, ExpectMatches(c, out->front()));
  }
  RecordProperty("cases", static_cast<int>(cases_.size()));
  RecordProperty("max_rel_l2", Scientific(worst));
}

TEST_P(GoldenTest, AllCasesAsOneBatch) {
  // Mixed lengths, masks, weights modes and poolings packed in one Run.
  std::vector<SequenceInput> batch;
  for (const GoldenCase& c : cases_) batch.push_back(c.AsInput());
  absl::StatusOr<std::vector<SequenceOutput>> out = engine_->Run(batch);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), cases_.size());
  double worst = 0;
  for (size_t i = 0; i < cases_.size(); ++i) {
    worst = std::max(worst, ExpectMatches(cases_[i], (*out)[i]));
  }
  RecordProperty("cases", static_cast<int>(cases_.size()));
  RecordProperty("max_rel_l2", Scientific(worst));
}

TEST_P(GoldenTest, BatchInReverseOrder) {
  // Same batch reversed: a sequence's answer must not depend on where it sits.
  std::vector<SequenceInput> batch;
  for (auto it = cases_.rbegin(); it != cases_.rend(); ++it) batch.push_back(it->AsInput());
  absl::StatusOr<std::vector<SequenceOutput>> out = engine_->Run(batch);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), cases_.size());
  for (size_t i = 0; i < cases_.size(); ++i) {
    ExpectMatches(cases_[cases_.size() - 1 - i], (*out)[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, GoldenTest,
    ::testing::Combine(::testing::ValuesIn(kModelNames),
                       ::testing::Values(EngineKind::kReference, EngineKind::kOneDnn)),
    [](const ::testing::TestParamInfo<GoldenTest::ParamType>& info) {
      return std::get<0>(info.param) +
             (std::get<1>(info.param) == EngineKind::kReference ? "_Reference"
                                                                 : "_OneDnn");
    });

TEST(GoldenDataTest, FindsEveryModelDirectory) {
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(GoldenDir())) {
    if (entry.is_directory()) found.push_back(entry.path().filename().string());
  }
  std::sort(found.begin(), found.end());
  EXPECT_EQ(found.size(), 4u);
  EXPECT_EQ(found, kModelNames);
}

TEST(GoldenDataTest, Bf16ModelIsStoredAsBf16) {
  // Guards the fixture itself: the bf16 model must exercise the BF16 path.
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(
      GoldenDir() + "/mha_learned_bf16/weights.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(file->Has("pos_embedding.weight"));
  for (const auto& [name, info] : file->tensors()) {
    EXPECT_EQ(info.dtype, DType::kBF16) << name;
  }
}

}  // namespace
}  // namespace attnserve::core
