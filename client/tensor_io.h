// Reading and writing what attnctl exchanges with files: NumPy .npy arrays
// (little-endian float32, C order) and JSON requests. Stateless functions;
// thread-safe.
#ifndef ATTNSERVE_CLIENT_TENSOR_IO_H_
#define ATTNSERVE_CLIENT_TENSOR_IO_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"

namespace attnserve::client {

struct NpyArray {
  std::vector<uint64_t> shape;
  std::vector<float> data;  // row-major, product(shape) values
};

// A .npy file (format version 1, 2 or 3) holding '<f4' (float32) data in C
// order. INVALID_ARGUMENT, naming the file, for anything else (another dtype,
// Fortran order, a truncated file).
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
// Writes `array` as a version 1.0 .npy file of '<f4'.
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

// The requests of a JSON file, in one of three forms:
//   - an AttendRequest in protobuf's JSON mapping ({"input": {"rows": 2,
//     "cols": 4, "data": [...]}, "mask": {"causal": true}, ...});
//   - an array of them (a ghz data file);
//   - a matrix: an array of rows, each an array of numbers (becomes
//     input; every other field left at its default).
// INVALID_ARGUMENT naming the file and what is wrong.
absl::StatusOr<std::vector<v1::AttendRequest>> ReadRequestsJson(const std::string& path);

// A request whose input is `rows` x `d_model` values uniform in [-1, 1], drawn
// from `rng`; every other field at its default.
v1::AttendRequest RandomRequest(std::mt19937& rng, uint32_t rows, uint32_t d_model);

// `matrix` (2-D) as the request's input.
absl::Status SetInput(const NpyArray& matrix, v1::AttendRequest* request);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_TENSOR_IO_H_
