// Fuzz target (c): safetensors bytes -> core::SafetensorsFile::Open and
// ReadF32 of every tensor it lists, then the same bytes as the
// weights.safetensors of a model directory -> core::LoadModel (tensor names,
// shapes and dtypes against a config that uses every kind of tensor).
// Properties: never crashes or throws; a tensor Open accepts reads back as
// product(shape) values or a clear error; LoadModel's errors are
// INVALID_ARGUMENT and a model it accepts passes ValidateModelWeights.
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/model.h"
#include "core/safetensors.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_file.h"

namespace {

// A model directory under $TMPDIR with a fixed config.json (learned
// positions and additive relevance, so every optional tensor is wanted),
// removed at exit.
class ModelDir {
 public:
  ModelDir() {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/attn_fuzz_XXXXXX";
    FUZZ_CHECK(mkdtemp(pattern.data()) != nullptr);
    root_ = pattern;
    dir_ = root_ + "/fuzzmodel";
    std::filesystem::create_directory(dir_);
    std::ofstream(dir_ + "/config.json")
        << R"({"d_model": 4, "num_heads": 2, "positional": "learned", "max_length": 3,)"
        << R"( "relevance": "additive", "normalization": "softmax", "projections": true})";
  }
  ~ModelDir() {
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
  const std::string& dir() const { return dir_; }
  void SetWeights(const uint8_t* data, size_t size) {
    std::FILE* f = std::fopen((dir_ + "/weights.safetensors").c_str(), "wb");
    FUZZ_CHECK(f != nullptr);
    FUZZ_CHECK(size == 0 || std::fwrite(data, 1, size, f) == size);
    std::fclose(f);
  }

 private:
  std::string root_, dir_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attnserve;
  static fuzz::MemoryFile* file = new fuzz::MemoryFile("safetensors_fuzz");
  static ModelDir model_dir;  // destroyed at exit: removes the directory
  const std::string& path = file->Set(data, size);
  absl::StatusOr<core::SafetensorsFile> st = core::SafetensorsFile::Open(path);
  if (!st.ok()) {
    FUZZ_CHECK(st.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(st.status().message().find(path) != std::string_view::npos);
  } else {
    for (const auto& [name, info] : st->tensors()) {
      FUZZ_CHECK(info.begin <= info.end);
      absl::StatusOr<std::vector<float>> values = st->ReadF32(name, info.shape);
      if (!values.ok()) continue;  // another dtype, or a non-finite value
      uint64_t count = 1;
      for (int64_t n : info.shape) count *= static_cast<uint64_t>(n);
      FUZZ_CHECK(values->size() == count);
    }
  }
  model_dir.SetWeights(data, size);
  absl::StatusOr<core::Model> model = core::LoadModel(model_dir.dir());
  if (!model.ok()) {
    FUZZ_CHECK(model.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(core::ValidateModelWeights(model->config, model->weights, "fuzz").ok());
  return 0;
}
