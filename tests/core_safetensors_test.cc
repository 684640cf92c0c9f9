// Tests of the safetensors reader/writer (core/safetensors.h): F32 and BF16
// round trips, BF16 rounding, the header layout, and every way a file can be
// malformed, each an error with the right code and a message naming the file,
// the tensor and what was expected. LoadModel is in core_loader_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "tests/loader_util.h"
#include "tests/test_util.h"

namespace attnserve::core::loader_test {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace attnserve::core::loader_test
