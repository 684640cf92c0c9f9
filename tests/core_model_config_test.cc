// Tests of ParseModelConfig / ValidateModelConfig: defaults, every enum
// spelling, and one test per way config.json can be wrong, each checking the
// code and that the message names the file, the key and what was expected.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/model_config.h"

namespace attnserve::core {
namespace {

using ::testing::HasSubstr;

constexpr char kSource[] = "models/x/config.json";

// Parses `json`, expects INVALID_ARGUMENT naming kSource and every `part`.
void ExpectRejected(const std::string& json,
                    const std::vector<std::string>& parts) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(json, kSource);
  ASSERT_FALSE(config.ok()) << json;
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << json;
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr(kSource)) << json;
  for (const std::string& part : parts) {
    EXPECT_THAT(message, HasSubstr(part)) << json;
  }
}

TEST(ModelConfigTest, MinimalConfigGetsDefaults) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(R"({"d_model": 64, "num_heads": 4})", kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->d_model, 64u);
  EXPECT_EQ(config->num_heads, 4u);
  EXPECT_EQ(config->d_head(), 16u);
  EXPECT_EQ(config->positional, Positional::kNone);
  EXPECT_EQ(config->max_length, 4096u);
  EXPECT_EQ(config->relevance, Relevance::kDot);
  EXPECT_EQ(config->normalization, Normalization::kSoftmax);
  EXPECT_TRUE(config->projections);
  EXPECT_EQ(config->precision, Precision::kFp32);
  EXPECT_DOUBLE_EQ(config->scale, 0.25);  // 1 / sqrt(d_head = 16)
}

TEST(ModelConfigTest, DefaultScaleIsOneOverSqrtDHead) {
  const std::pair<int, int> cases[] = {
      {64, 1}, {64, 2}, {96, 3}, {256, 8}, {768, 12}};
  for (const auto& [d_model, heads] : cases) {
    absl::StatusOr<ModelConfig> config =
        ParseModelConfig("{\"d_model\": " + std::to_string(d_model) +
                             ", \"num_heads\": " + std::to_string(heads) + "}",
                         kSource);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_DOUBLE_EQ(config->scale, 1.0 / std::sqrt(double(d_model) / heads));
  }
}

TEST(ModelConfigTest, FullConfigKeepsEveryField) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(
      R"({"d_model": 256, "num_heads": 8, "positional": "rotary",
          "max_length": 512, "relevance": "additive", "normalization": "relu",
          "projections": false, "precision": "bf16", "scale": 0.3})",
      kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->d_model, 256u);
  EXPECT_EQ(config->num_heads, 8u);
  EXPECT_EQ(config->positional, Positional::kRotary);
  EXPECT_EQ(config->max_length, 512u);
  EXPECT_EQ(config->relevance, Relevance::kAdditive);
  EXPECT_EQ(config->normalization, Normalization::kRelu);
  EXPECT_FALSE(config->projections);
  EXPECT_EQ(config->precision, Precision::kBf16);
  EXPECT_DOUBLE_EQ(config->scale, 0.3);  // explicit scale kept, not defaulted
  // An integer scale is a number too.
  config = ParseModelConfig(R"({"d_model": 8, "num_heads": 2, "scale": 2})",
                            kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->scale, 2.0);
}

// Parses a config with `key` set to `spelling` and returns the config.
ModelConfig ParseWith(const std::string& key, const std::string& spelling) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(R"({"d_model": 8, "num_heads": 2, ")" + key + R"(": ")" +
                           spelling + "\"}",
                       kSource);
  EXPECT_TRUE(config.ok()) << key << "=" << spelling << ": " << config.status();
  return config.value_or(ModelConfig{});
}

TEST(ModelConfigTest, EveryEnumSpellingParsesAndRoundTrips) {
  for (Positional p : {Positional::kNone, Positional::kSinusoidal,
                       Positional::kLearned, Positional::kRotary}) {
    EXPECT_EQ(ParseWith("positional", std::string(ToString(p))).positional, p);
  }
  for (Relevance r : {Relevance::kDot, Relevance::kAdditive}) {
    EXPECT_EQ(ParseWith("relevance", std::string(ToString(r))).relevance, r);
  }
  for (Normalization n : {Normalization::kSoftmax, Normalization::kRelu}) {
    EXPECT_EQ(
        ParseWith("normalization", std::string(ToString(n))).normalization, n);
  }
  for (Precision p : {Precision::kFp32, Precision::kBf16}) {
    EXPECT_EQ(ParseWith("precision", std::string(ToString(p))).precision, p);
  }
  // The spellings are the contract of DESIGN.md and of ModelInfo.
  EXPECT_EQ(ToString(Positional::kSinusoidal), "sinusoidal");
  EXPECT_EQ(ToString(Positional::kLearned), "learned");
  EXPECT_EQ(ToString(Positional::kRotary), "rotary");
  EXPECT_EQ(ToString(Positional::kNone), "none");
  EXPECT_EQ(ToString(Relevance::kAdditive), "additive");
  EXPECT_EQ(ToString(Normalization::kRelu), "relu");
  EXPECT_EQ(ToString(Precision::kBf16), "bf16");
}

TEST(ModelConfigTest, MalformedJsonGivesThePosition) {
  ExpectRejected("{\"d_model\": 8,\n \"num_heads\": }",
                 {"malformed JSON", "line 2"});
  ExpectRejected("", {"malformed JSON"});
  // nlohmann/json reports a number too large for a double as out_of_range.
  ExpectRejected(R"({"d_model": 8, "num_heads": 2, "scale": 1e999})",
                 {"malformed JSON", "1e999"});
  ExpectRejected(R"({"d_model": 8, "num_heads": 2} trailing)",
                 {"malformed JSON"});
}

TEST(ModelConfigTest, TopLevelMustBeAnObject) {
  ExpectRejected("[256, 8]", {"JSON object", "array"});
}

TEST(ModelConfigTest, UnknownKeyIsAnError) {
  ExpectRejected(R"({"d_model": 256, "num_head": 8})",
                 {"unknown key \"num_head\"", "num_heads"});
  ExpectRejected(R"({"d_model": 256, "num_heads": 8, "dropout": 0.1})",
                 {"unknown key \"dropout\""});
}

TEST(ModelConfigTest, RequiredKeysMustBePresent) {
  ExpectRejected(R"({"num_heads": 8})", {"missing required key \"d_model\""});
  ExpectRejected(R"({"d_model": 8})", {"missing required key \"num_heads\""});
}

TEST(ModelConfigTest, BadEnumStringListsTheAcceptedOnes) {
  ExpectRejected(R"({"d_model": 8, "num_heads": 2, "positional": "sinusodal"})",
                 {"\"positional\"", "\"sinusodal\"",
                  "\"none\", \"sinusoidal\", "
                  "\"learned\", \"rotary\""});
  ExpectRejected(R"({"d_model": 8, "num_heads": 2, "relevance": "Dot"})",
                 {"\"relevance\"", "\"dot\", \"additive\""});
  ExpectRejected(
      R"({"d_model": 8, "num_heads": 2, "normalization": "sparsemax"})",
      {"\"normalization\"", "\"softmax\", \"relu\""});
  ExpectRejected(R"({"d_model": 8, "num_heads": 2, "precision": "fp16"})",
                 {"\"precision\"", "\"fp32\", \"bf16\""});
  ExpectRejected(R"({"d_model": 8, "num_heads": 2, "precision": 32})",
                 {"\"precision\"", "must be a string"});
}

TEST(ModelConfigTest, NumHeadsMustDivideDModel) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(R"({"d_model": 256, "num_heads": 7})", kSource);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(),
            "models/x/config.json: \"num_heads\" must divide \"d_model\" "
            "(256 % 7 != 0)");
}

TEST(ModelConfigTest, RotaryNeedsAnEvenHeadWidth) {
  ExpectRejected(R"({"d_model": 12, "num_heads": 4, "positional": "rotary"})",
                 {"rotary", "even head width", "was 3"});
  EXPECT_TRUE(ParseModelConfig(R"({"d_model": 12, "num_heads": 3, "positional": "rotary"})",
                               kSource).ok());
}

TEST(ModelConfigTest, SizesMustBePositiveIntegers) {
  for (const std::string key : {"d_model", "num_heads", "max_length"}) {
    for (const std::string bad :
         {"0", "-8", "8.0", "\"8\"", "true", "null", "4294967296"}) {
      std::string json = R"({"d_model": 8, "num_heads": 2, "max_length": 16})";
      const size_t at = json.find("\"" + key + "\": ") + key.size() + 4;
      json.replace(at, json.find_first_of(",}", at) - at, bad);
      ExpectRejected(json, {"\"" + key + "\"", "positive integer"});
    }
  }
}

TEST(ModelConfigTest, ScaleMustBeAFinitePositiveNumber) {
  for (const std::string bad : {"0", "-0.5", "-1e-300", "\"0.1\"", "null"}) {
    ExpectRejected(R"({"d_model": 8, "num_heads": 2, "scale": )" + bad + "}",
                   {"\"scale\"", "finite number > 0"});
  }
}

TEST(ModelConfigTest, ProjectionsMustBeABoolean) {
  for (const std::string bad : {"1", "\"true\"", "null"}) {
    ExpectRejected(
        R"({"d_model": 8, "num_heads": 2, "projections": )" + bad + "}",
        {"\"projections\"", "true or false"});
  }
}

TEST(ModelConfigTest, ValidateCatchesCodeBuiltMistakes) {
  ModelConfig config;
  config.d_model = 8;
  config.num_heads = 2;
  config.scale = 0.5;
  EXPECT_TRUE(ValidateModelConfig(config, "mem").ok());

  ModelConfig no_scale = config;
  no_scale.scale =
      0;  // the parser's default is not applied to code-built configs
  absl::Status status = ValidateModelConfig(no_scale, "mem");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"scale\""));

  ModelConfig nan_scale = config;
  nan_scale.scale = std::nan("");
  EXPECT_FALSE(ValidateModelConfig(nan_scale, "mem").ok());

  ModelConfig no_heads = config;
  no_heads.num_heads = 0;
  EXPECT_THAT(ValidateModelConfig(no_heads, "mem").message(),
              HasSubstr("\"num_heads\" must be a positive integer"));

  ModelConfig uneven = config;
  uneven.num_heads = 3;
  EXPECT_THAT(ValidateModelConfig(uneven, "mem").message(),
              HasSubstr("(8 % 3 != 0)"));

  ModelConfig zero_length = config;
  zero_length.max_length = 0;
  EXPECT_THAT(ValidateModelConfig(zero_length, "mem").message(),
              HasSubstr("\"max_length\""));
}

}  // namespace
}  // namespace attnserve::core
