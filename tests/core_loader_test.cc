// Tests of the safetensors reader/writer and of LoadModel: every way a model
// directory can be wrong is an error with the right code and a message naming
// the file, the tensor and what was expected; every accepted layout loads the
// exact numbers in the file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace attnserve::core {
namespace {

using ::testing::HasSubstr;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Each test gets a fresh directory, removed afterwards.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = ::testing::TempDir() + "attnserve_loader_" + info->name() + "_" +
           std::to_string(getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  static void WriteFile(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  }

  // A model directory with config `config_json` and the given tensors.
  void WriteModel(const std::string& config_json,
                  const std::map<std::string, TensorToWrite>& tensors) {
    WriteFile(Path("config.json"), config_json);
    ASSERT_TRUE(WriteSafetensors(Path("weights.safetensors"), tensors).ok());
  }

  std::string dir_;
};

// Raw safetensors bytes, for files WriteSafetensors would never produce.
std::string RawSafetensors(const std::string& header, const std::string& data,
                           uint64_t header_size) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>(header_size >> (8 * i)));
  return out + header + data;
}
std::string RawSafetensors(const std::string& header, const std::string& data) {
  return RawSafetensors(header, data, header.size());
}

// Values whose position is readable: element (r, c) holds r * 100 + c.
TensorToWrite Indexed(int64_t rows, int64_t cols) {
  TensorToWrite t{{rows, cols}, {}, DType::kF32};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) t.values.push_back(r * 100.0f + c);
  }
  return t;
}
TensorToWrite Indexed(int64_t n) {
  TensorToWrite t = Indexed(1, n);
  t.shape = {n};
  return t;
}
TensorToWrite Filled(std::vector<int64_t> shape, float value) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return {shape, std::vector<float>(n, value), DType::kF32};
}

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

// ---- Safetensors: writing and reading back --------------------------------

TEST_F(LoaderTest, RoundTripF32IsExact) {
  std::mt19937 rng(7);
  TensorToWrite a{{3, 5}, testing::RandomVector(rng, 15, 2.0f), DType::kF32};
  TensorToWrite b{{2}, {-1e-30f, 3e38f}, DType::kF32};
  ASSERT_TRUE(
      WriteSafetensors(Path("t.safetensors"), {{"b", b}, {"a", a}}).ok());

  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(Path("t.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors().size(), 2u);
  const TensorInfo& info = file->tensors().at("a");
  EXPECT_EQ(info.dtype_name, "F32");
  EXPECT_EQ(info.shape, (std::vector<int64_t>{3, 5}));
  // Data is laid out in name order: "a" first.
  EXPECT_EQ(info.begin, 0u);
  EXPECT_EQ(info.end, 60u);
  // A bit-exact round trip, so == on floats is the right test here.
  EXPECT_EQ(*file->ReadF32("a", {3, 5}), a.values);
  EXPECT_EQ(*file->ReadF32("b", {2}), b.values);
}

TEST_F(LoaderTest, RoundTripBf16GivesTheRoundedValues) {
  std::mt19937 rng(8);
  TensorToWrite t{{4, 8}, testing::RandomVector(rng, 32, 3.0f), DType::kBF16};
  ASSERT_TRUE(WriteSafetensors(Path("t.safetensors"), {{"w", t}}).ok());
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(Path("t.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors().at("w").dtype_name, "BF16");
  EXPECT_EQ(file->tensors().at("w").end, 64u);  // 2 bytes per value
  absl::StatusOr<std::vector<float>> read = file->ReadF32("w", {4, 8});
  ASSERT_TRUE(read.ok()) << read.status();
  for (size_t i = 0; i < t.values.size(); ++i) {
    EXPECT_EQ((*read)[i], Bf16ToFloat(FloatToBf16(t.values[i]))) << i;
    EXPECT_NEAR((*read)[i], t.values[i], std::abs(t.values[i]) / 256) << i;
  }
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  // 1 + 2^-8 lies halfway between 0x3F80 and 0x3F81: ties go to even 0x3F80.
  EXPECT_EQ(FloatToBf16(1.0f + 1.0f / 256), 0x3F80);
  // 1 + 3 * 2^-8 lies halfway between 0x3F81 and 0x3F82: to even 0x3F82.
  EXPECT_EQ(FloatToBf16(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(FloatToBf16(1.0f + 1.0f / 256 + 1.0f / 4096),
            0x3F81);  // above half
  EXPECT_EQ(FloatToBf16(kInf), 0x7F80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()),
            0x7F80);  // overflows
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(kNan))));
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
}

TEST_F(LoaderTest, HeaderIsPaddedToAMultipleOf8AndMetadataIgnored) {
  ASSERT_TRUE(
      WriteSafetensors(Path("t.safetensors"), {{"x", Filled({3}, 1)}}).ok());
  std::ifstream in(Path("t.safetensors"), std::ios::binary);
  unsigned char size_bytes[8];
  in.read(reinterpret_cast<char*>(size_bytes), 8);
  EXPECT_EQ(size_bytes[0] % 8, 0);

  const std::string header =
      R"({"__metadata__": {"format": "pt"}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})";
  WriteFile(Path("m.safetensors"),
            RawSafetensors(header, std::string("\0\0\x80\x3f", 4)));
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(Path("m.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors().size(), 1u);
  EXPECT_EQ(*file->ReadF32("x", {1}), std::vector<float>{1.0f});
}

// ---- Safetensors: malformed files ------------------------------------------

void ExpectInvalid(const absl::Status& status, const std::string& path,
                   const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  const std::string message(status.message());  // gtest prints it readably
  EXPECT_THAT(message, HasSubstr(path));
  for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
}

TEST_F(LoaderTest, MissingFileIsNotFound) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(Path("none.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(Path("none.safetensors")));
}

TEST_F(LoaderTest, FileShorterThan8Bytes) {
  WriteFile(Path("t.safetensors"), "abc");
  ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                Path("t.safetensors"), {"3 bytes", "8-byte"});
}

TEST_F(LoaderTest, HeaderLargerThanTheFile) {
  WriteFile(Path("t.safetensors"), RawSafetensors("{}", "", 1000));
  ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                Path("t.safetensors"),
                {"header larger than the file", "1000", "file size 10 bytes"});
}

TEST_F(LoaderTest, HeaderNotJson) {
  WriteFile(Path("t.safetensors"), RawSafetensors("{\"x\": oops}", ""));
  ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                Path("t.safetensors"), {"header is not valid JSON"});
  WriteFile(Path("u.safetensors"), RawSafetensors("[1, 2]", ""));
  ExpectInvalid(SafetensorsFile::Open(Path("u.safetensors")).status(),
                Path("u.safetensors"), {"JSON object"});
}

TEST_F(LoaderTest, TruncatedData) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  WriteFile(Path("t.safetensors"),
            RawSafetensors(header, std::string(12, '\0')));
  ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                Path("t.safetensors"),
                {"truncated data", "\"w\"", "[0, 16)", "12 bytes"});
}

TEST_F(LoaderTest, ByteRangeDisagreesWithShape) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})";
  WriteFile(Path("t.safetensors"),
            RawSafetensors(header, std::string(16, '\0')));
  ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                Path("t.safetensors"), {"\"w\"", "12 bytes", "F32 [2, 2]"});
}

TEST_F(LoaderTest, MalformedTensorEntries) {
  const std::string entries[] = {
      R"({"w": {"shape": [1], "data_offsets": [0, 4]}})",
      R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})",
      R"({"w": [1, 2]})"};
  for (const std::string& header : entries) {
    WriteFile(Path("t.safetensors"),
              RawSafetensors(header, std::string(4, '\0')));
    ExpectInvalid(SafetensorsFile::Open(Path("t.safetensors")).status(),
                  Path("t.safetensors"), {"\"w\""});
  }
}

TEST_F(LoaderTest, ReadF32RejectsOtherDtypes) {
  for (const std::string dtype : {"F16", "I32"}) {
    const int bytes = dtype == "F16" ? 2 : 4;
    const std::string header = "{\"w\": {\"dtype\": \"" + dtype +
                               "\", \"shape\": [2], \"data_offsets\": [0, " +
                               std::to_string(2 * bytes) + "]}}";
    WriteFile(Path("t.safetensors"),
              RawSafetensors(header, std::string(2 * bytes, '\0')));
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::Open(Path("t.safetensors"));
    ASSERT_TRUE(file.ok()) << file.status();
    ExpectInvalid(file->ReadF32("w", {2}).status(), Path("t.safetensors"),
                  {"\"w\"", "dtype " + dtype, "F32 or BF16"});
  }
}

TEST_F(LoaderTest, ReadF32RejectsWrongShapeAndMissingTensor) {
  ASSERT_TRUE(
      WriteSafetensors(Path("t.safetensors"), {{"w", Indexed(768, 128)}}).ok());
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(Path("t.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ExpectInvalid(file->ReadF32("w", {768, 256}).status(), Path("t.safetensors"),
                {"\"w\"", "shape [768, 128]", "expected [768, 256]"});
  ExpectInvalid(file->ReadF32("v", {3}).status(), Path("t.safetensors"),
                {"missing tensor \"v\"", "[3]"});
}

TEST_F(LoaderTest, ReadF32RejectsNonFiniteValues) {
  for (float bad : {kNan, kInf, -kInf}) {
    TensorToWrite t = Filled({2, 3}, 1.0f);
    t.values[5] = bad;
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      t.dtype = dtype;
      ASSERT_TRUE(WriteSafetensors(Path("t.safetensors"), {{"w", t}}).ok());
      absl::StatusOr<SafetensorsFile> file =
          SafetensorsFile::Open(Path("t.safetensors"));
      ASSERT_TRUE(file.ok()) << file.status();
      ExpectInvalid(file->ReadF32("w", {2, 3}).status(), Path("t.safetensors"),
                    {"\"w\"", "non-finite", "flat index 5"});
    }
  }
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
}  // namespace attnserve::core
