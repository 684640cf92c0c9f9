// Fuzz target (d): .npy bytes -> client::ReadNpy (attnctl's --input files)
// and, for a 2-D array, client::SetInput. Properties: never crashes or
// throws; an accepted array holds exactly product(shape) values; a rejection
// is INVALID_ARGUMENT naming the file.
#include <cstdint>
#include <string>

#include "client/tensor_io.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attnserve;
  static fuzz::MemoryFile* file = new fuzz::MemoryFile("npy_fuzz");
  const std::string& path = file->Set(data, size);
  absl::StatusOr<client::NpyArray> array = client::ReadNpy(path);
  if (!array.ok()) {
    FUZZ_CHECK(array.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(array.status().message().find(path) != std::string_view::npos);
    return 0;
  }
  // The product cannot overflow: the values are in the file.
  uint64_t count = 1;
  for (uint64_t n : array->shape) count *= n;
  FUZZ_CHECK(count == array->data.size());
  v1::AttendRequest request;
  const absl::Status set = client::SetInput(*array, &request);
  if (array->shape.size() == 2) {
    if (set.ok()) {
      FUZZ_CHECK(uint64_t{request.input().rows()} == array->shape[0]);
      FUZZ_CHECK(uint64_t{request.input().cols()} == array->shape[1]);
      FUZZ_CHECK(static_cast<uint64_t>(request.input().data_size()) == count);
    }
  } else {
    FUZZ_CHECK(!set.ok());
  }
  return 0;
}
