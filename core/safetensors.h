// Reading and writing the safetensors format: an 8-byte little-endian header
// size N, N bytes of JSON header {"name": {"dtype", "shape", "data_offsets"},
// "__metadata__": {...}}, then the raw little-endian tensor bytes.
// SafetensorsFile is immutable after Open and safe to read from many threads.
#ifndef ATTNSERVE_CORE_SAFETENSORS_H_
#define ATTNSERVE_CORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnserve::core {

enum class DType { kF32, kBF16, kOther };

struct TensorInfo {
  std::string dtype_name;      // as written in the header ("F32", "BF16", "F16", ...)
  DType dtype = DType::kOther;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

class SafetensorsFile {
 public:
  // Reads and checks the whole file: the header size fits in the file, the
  // header is JSON of the expected form, and every tensor's byte range lies in
  // the data section and matches dtype x shape. Errors name the path and, where
  // one is at fault, the tensor.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool Has(const std::string& name) const { return tensors_.count(name) != 0; }

  // Returns tensor `name` widened to fp32. Errors: NOT_FOUND-style message when
  // absent (INVALID_ARGUMENT code), a shape other than `expected_shape`, a
  // dtype other than F32/BF16, or a non-finite value.
  absl::StatusOr<std::vector<float>> ReadF32(
      const std::string& name, const std::vector<int64_t>& expected_shape) const;

 private:
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
  std::vector<char> data_;  // the data section, after the header
};

// One tensor to write: fp32 values, stored as F32 or (rounded to nearest even)
// BF16.
struct TensorToWrite {
  std::vector<int64_t> shape;
  std::vector<float> values;
  DType dtype = DType::kF32;
};

// Writes a safetensors file (used by tests and tools). Tensors are laid out
// in name order.
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, TensorToWrite>& tensors);

// Conversions between fp32 and bfloat16 bit patterns (round to nearest even).
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t b);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_SAFETENSORS_H_
