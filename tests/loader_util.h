// Helpers shared by the loader tests (core_safetensors_test.cc,
// core_loader_test.cc): a fixture giving each test a fresh directory, raw
// safetensors bytes for files WriteSafetensors would never produce, tensors
// whose values are readable, and the check of an INVALID_ARGUMENT message.
#ifndef ATTNSERVE_TESTS_LOADER_UTIL_H_
#define ATTNSERVE_TESTS_LOADER_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "core/safetensors.h"

namespace attnserve::core::loader_test {

inline constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();

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
inline std::string RawSafetensors(const std::string& header,
                                  const std::string& data,
                                  uint64_t header_size) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>(header_size >> (8 * i)));
  return out + header + data;
}
inline std::string RawSafetensors(const std::string& header,
                                  const std::string& data) {
  return RawSafetensors(header, data, header.size());
}

// Values whose position is readable: element (r, c) holds r * 100 + c.
inline TensorToWrite Indexed(int64_t rows, int64_t cols) {
  TensorToWrite t{{rows, cols}, {}, DType::kF32};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) t.values.push_back(r * 100.0f + c);
  }
  return t;
}
inline TensorToWrite Indexed(int64_t n) {
  TensorToWrite t = Indexed(1, n);
  t.shape = {n};
  return t;
}
inline TensorToWrite Filled(std::vector<int64_t> shape, float value) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return {shape, std::vector<float>(n, value), DType::kF32};
}

// Expects INVALID_ARGUMENT with a message naming `path` and every one of
// `parts`.
inline void ExpectInvalid(const absl::Status& status, const std::string& path,
                          const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  const std::string message(status.message());  // gtest prints it readably
  EXPECT_THAT(message, ::testing::HasSubstr(path));
  for (const std::string& part : parts) {
    EXPECT_THAT(message, ::testing::HasSubstr(part));
  }
}

}  // namespace attnserve::core::loader_test

#endif  // ATTNSERVE_TESTS_LOADER_UTIL_H_
