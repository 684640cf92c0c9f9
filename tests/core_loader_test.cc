// Tests of LoadModel and ValidateModelWeights: every way a model directory
// can be wrong is an error with the right code and a message naming the file,
// the tensor and what was expected; every accepted layout loads the exact
// numbers in the file. The safetensors reader/writer itself is in
// core_safetensors_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/safetensors.h"
#include "tests/loader_util.h"
#include "tests/test_util.h"

namespace attnserve::core::loader_test {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kD = 4;  // d_model of the small test models (2 heads)
const char kConfig[] = R"({"d_model": 4, "num_heads": 2})";

// The complete packed (in_proj) layout for d = 4.
std::map<std::string, TensorToWrite> PackedTensors() {
  return {{"in_proj_weight", Indexed(3 * kD, kD)},
          {"in_proj_bias", Indexed(3 * kD)},
          {"out_proj.weight", Filled({kD, kD}, 0.5f)},
          {"out_proj.bias", Filled({kD}, 0.25f)}};
}

std::map<std::string, TensorToWrite> WithoutTensor(std::string name) {
  auto tensors = PackedTensors();
  tensors.erase(name);
  return tensors;
}

// ---- LoadModel: failures ----------------------------------------------------

TEST_F(LoaderTest, MissingConfigIsNotFound) {
  absl::StatusOr<Model> model = LoadModel(dir_);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr(Path("config.json")));
  model = LoadModel(Path("no_such_model"));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr("does not exist"));
}

TEST_F(LoaderTest, MissingWeightsIsNotFound) {
  WriteFile(Path("config.json"), kConfig);
  absl::StatusOr<Model> model = LoadModel(dir_);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr(Path("weights.safetensors")));
}

TEST_F(LoaderTest, ConfigErrorsNameTheConfigFile) {
  WriteModel(R"({"d_model": 4, "num_heads": 2,})", PackedTensors());
  ExpectInvalid(LoadModel(dir_).status(), Path("config.json"),
                {"malformed JSON", "line 1"});
  WriteModel(R"({"d_model": 4, "num_head": 2})", PackedTensors());
  ExpectInvalid(LoadModel(dir_).status(), Path("config.json"),
                {"\"num_head\""});
}

TEST_F(LoaderTest, MissingTensorsNameTheTensorAndShape) {
  WriteModel(kConfig, WithoutTensor("out_proj.weight"));
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"missing tensor \"out_proj.weight\"", "[4, 4]"});
  WriteModel(kConfig, WithoutTensor("in_proj_weight"));
  ExpectInvalid(
      LoadModel(dir_).status(), Path("weights.safetensors"),
      {"missing tensor \"in_proj_weight\"", "[12, 4]", "q_proj.weight"});
  // A separate layout with k missing.
  auto tensors = WithoutTensor("in_proj_weight");
  tensors["q_proj.weight"] = Indexed(kD, kD);
  tensors["v_proj.weight"] = Indexed(kD, kD);
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"k_proj.weight\"", "[4, 4]"});
}

TEST_F(LoaderTest, WrongShapeAndDtypeNameTheTensor) {
  auto tensors = PackedTensors();
  tensors["in_proj_weight"] = Indexed(2 * kD, kD);
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"in_proj_weight\"", "shape [8, 4]", "expected [12, 4]"});

  WriteFile(
      Path("weights.safetensors"),
      RawSafetensors(R"({"in_proj_weight": {"dtype": "F16", "shape": [12, 4],)"
                     R"( "data_offsets": [0, 96]}})",
                     std::string(96, '\0')));
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"in_proj_weight\"", "dtype F16", "F32 or BF16"});
}

TEST_F(LoaderTest, NonFiniteWeightNamesTensorAndIndex) {
  auto tensors = PackedTensors();
  tensors["out_proj.bias"].values[2] = kNan;
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"out_proj.bias\"", "flat index 2"});
}

TEST_F(LoaderTest, UnexpectedTensorIsAnError) {
  auto tensors = PackedTensors();
  tensors["bias_k"] = Filled({1, 1, kD}, 0.0f);
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"unexpected tensor \"bias_k\"", "add_bias_kv"});

  tensors = PackedTensors();
  tensors["pos_embedding.weight"] = Filled({8, kD}, 0.0f);
  WriteModel(R"({"d_model": 4, "num_heads": 2, "positional": "sinusoidal"})",
             tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"pos_embedding.weight\"", "learned", "sinusoidal"});
}

TEST_F(LoaderTest, AmbiguousLayoutsAreErrors) {
  auto tensors = PackedTensors();
  tensors["q_proj.weight"] = Indexed(kD, kD);
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"ambiguous", "in_proj_weight"});

  tensors = WithoutTensor("in_proj_weight");
  for (const std::string n :
       {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj_weight"}) {
    tensors[n] = Indexed(kD, kD);
  }
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"ambiguous", "\"q_proj.weight\"", "\"q_proj_weight\""});

  tensors = PackedTensors();
  tensors["q_proj.bias"] = Filled({kD}, 0.0f);
  WriteModel(kConfig, tensors);
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"ambiguous", "in_proj_bias"});
}

TEST_F(LoaderTest, ParameterFreeConfigRejectsProjectionTensors) {
  WriteModel(R"({"d_model": 4, "num_heads": 2, "projections": false})",
             {{"out_proj.weight", Filled({kD, kD}, 0.0f)}});
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"\"out_proj.weight\"", "parameter-free"});
}

TEST_F(LoaderTest, RequiredExtraTensorsMustBePresent) {
  WriteModel(
      R"({"d_model": 4, "num_heads": 2, "positional": "learned", "max_length": 8})",
      PackedTensors());
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"missing tensor \"pos_embedding.weight\"", "[8, 4]"});
  WriteModel(R"({"d_model": 4, "num_heads": 2, "relevance": "additive"})",
             PackedTensors());
  ExpectInvalid(LoadModel(dir_).status(), Path("weights.safetensors"),
                {"missing tensor \"additive_v\"", "[2, 2]"});
}

// ---- LoadModel: accepted layouts ------------------------------------------

TEST_F(LoaderTest, InProjIsSplitIntoQkvRows) {
  WriteModel(kConfig, PackedTensors());
  absl::StatusOr<Model> model = LoadModel(dir_ + "/");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, std::filesystem::path(dir_).filename().string());
  const ModelWeights& w = model->weights;
  ASSERT_EQ(w.q_weight.size(), 16u);
  // Element (r, c) of in_proj_weight holds r * 100 + c: q = rows 0-3,
  // k = rows 4-7, v = rows 8-11.
  EXPECT_EQ(w.q_weight[0], 0.0f);
  EXPECT_EQ(w.q_weight[3 * kD + 2], 302.0f);
  EXPECT_EQ(w.k_weight[0], 400.0f);
  EXPECT_EQ(w.k_weight[1 * kD + 3], 503.0f);
  EXPECT_EQ(w.v_weight[2 * kD + 1], 1001.0f);
  // in_proj_bias is one row: element c holds c.
  EXPECT_EQ(w.q_bias, (std::vector<float>{0, 1, 2, 3}));
  EXPECT_EQ(w.k_bias, (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(w.v_bias, (std::vector<float>{8, 9, 10, 11}));
  EXPECT_EQ(w.out_weight, std::vector<float>(16, 0.5f));
  EXPECT_EQ(w.out_bias, std::vector<float>(4, 0.25f));
  EXPECT_TRUE(w.pos_embedding.empty());
  EXPECT_TRUE(w.additive_v.empty());
}

TEST_F(LoaderTest, SeparateProjectionsInBothSpellings) {
  for (const std::string suffix : {".weight", "_weight"}) {
    auto tensors = WithoutTensor("in_proj_weight");
    tensors.erase("in_proj_bias");
    tensors["q_proj" + suffix] = Filled({kD, kD}, 1.0f);
    tensors["k_proj" + suffix] = Filled({kD, kD}, 2.0f);
    tensors["v_proj" + suffix] = Filled({kD, kD}, 3.0f);
    tensors["k_proj.bias"] = Filled({kD}, 7.0f);
    WriteModel(kConfig, tensors);
    absl::StatusOr<Model> model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << suffix << ": " << model.status();
    EXPECT_EQ(model->weights.q_weight, std::vector<float>(16, 1.0f));
    EXPECT_EQ(model->weights.k_weight, std::vector<float>(16, 2.0f));
    EXPECT_EQ(model->weights.v_weight, std::vector<float>(16, 3.0f));
    EXPECT_EQ(model->weights.q_bias, std::vector<float>(4, 0.0f));
    EXPECT_EQ(model->weights.k_bias, std::vector<float>(4, 7.0f));
  }
}

TEST_F(LoaderTest, AbsentBiasesAreZeros) {
  auto tensors = WithoutTensor("in_proj_bias");
  tensors.erase("out_proj.bias");
  WriteModel(kConfig, tensors);
  absl::StatusOr<Model> model = LoadModel(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  for (const auto* bias : {&model->weights.q_bias, &model->weights.k_bias,
                           &model->weights.v_bias, &model->weights.out_bias}) {
    EXPECT_EQ(*bias, std::vector<float>(4, 0.0f));
  }
}

TEST_F(LoaderTest, LearnedPositionsAdditiveVAndBf16AreLoaded) {
  auto tensors = PackedTensors();
  tensors["pos_embedding.weight"] = Indexed(8, kD);
  tensors["additive_v"] = Indexed(2, 2);
  tensors["out_proj.weight"] =
      Filled({kD, kD}, 1.0f + 1.0f / 256 + 1.0f / 4096);
  tensors["out_proj.weight"].dtype = DType::kBF16;
  WriteModel(R"({"d_model": 4, "num_heads": 2, "positional": "learned",
                 "max_length": 8, "relevance": "additive"})",
             tensors);
  absl::StatusOr<Model> model = LoadModel(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->weights.pos_embedding.size(), 32u);
  EXPECT_EQ(model->weights.pos_embedding[7 * kD + 1], 701.0f);
  EXPECT_EQ(model->weights.additive_v, (std::vector<float>{0, 1, 100, 101}));
  EXPECT_EQ(model->weights.out_weight,
            std::vector<float>(16, Bf16ToFloat(0x3F81)));
}

TEST_F(LoaderTest, ParameterFreeModelHasNoTensors) {
  WriteModel(R"({"d_model": 4, "num_heads": 2, "projections": false})", {});
  absl::StatusOr<Model> model = LoadModel(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE(model->config.projections);
  EXPECT_TRUE(model->weights.q_weight.empty());
  EXPECT_TRUE(model->weights.out_bias.empty());
}

// ---- ValidateModelWeights ---------------------------------------------------

TEST(ValidateModelWeightsTest, ChecksSizesAndUnusedTensors) {
  ModelConfig config;
  config.d_model = 8;
  config.num_heads = 2;
  config.scale = 0.5;
  config.positional = Positional::kLearned;
  config.max_length = 16;
  config.relevance = Relevance::kAdditive;
  auto model = testing::RandomModel(config, 1);
  EXPECT_TRUE(ValidateModelWeights(config, model->weights, "mem").ok());

  ModelWeights w = model->weights;
  w.k_weight.pop_back();
  ExpectInvalid(ValidateModelWeights(config, w, "mem"), "mem",
                {"k_weight", "[8, 8]"});
  w = model->weights;
  w.pos_embedding.resize(8);
  ExpectInvalid(ValidateModelWeights(config, w, "mem"), "mem",
                {"pos_embedding", "[16, 8]"});
  w = model->weights;
  w.v_bias[3] = kInf;
  ExpectInvalid(ValidateModelWeights(config, w, "mem"), "mem",
                {"v_bias", "non-finite"});
  config.projections = false;
  ExpectInvalid(ValidateModelWeights(config, model->weights, "mem"), "mem",
                {"q_weight", "unused"});
}

}  // namespace
}  // namespace attnserve::core::loader_test
