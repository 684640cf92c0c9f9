// Fuzz target (a): AttendRequest wire bytes -> protobuf parse ->
// server::ValidateRequest against three tiny models (together: every
// positional encoding that bounds L, both relevances, both normalizations,
// with and without projections) -> for a request it accepts, one run on the
// reference engine. Properties: never crashes; a rejection is one of the
// codes of DESIGN.md's table for a malformed request, with a message; an
// accepted request's reply estimate is within the limit, and the engine
// answers it with the shapes the wire contract promises and finite values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attnserve/v1/attention.pb.h"
#include "core/engine.h"
#include "server/validation.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tiny_models.h"

namespace {

using namespace attnserve;

// The models (tiny_models.h) keep every accepted request well under a
// millisecond: L <= max_length <= 24, d_model 8.
constexpr int64_t kMaxReplyBytes = 64 << 10;

using fuzz::AllFinite;
using fuzz::TinyModel;

void Check(const TinyModel& m, const v1::AttendRequest& request) {
  core::SequenceInput seq;
  const grpc::Status status = server::ValidateRequest(request, m.name, m.config, kMaxReplyBytes, &seq);
  if (!status.ok()) {
    const grpc::StatusCode code = status.error_code();
    FUZZ_CHECK(code == grpc::StatusCode::INVALID_ARGUMENT ||
               code == grpc::StatusCode::OUT_OF_RANGE ||
               code == grpc::StatusCode::RESOURCE_EXHAUSTED);
    FUZZ_CHECK(!status.error_message().empty());
    return;
  }
  const uint32_t L = request.input().rows();
  FUZZ_CHECK(seq.length == L && L >= 1);
  FUZZ_CHECK(seq.data.size() == size_t{L} * m.config.d_model);
  FUZZ_CHECK(server::EstimateReplyBytes(request, m.config) <= uint64_t{kMaxReplyBytes});
  // The models bound L (max_length), except "plain": keep its runs small too.
  if (L > 24) return;
  absl::StatusOr<std::vector<core::SequenceOutput>> out =
      m.reference->Run(std::span<const core::SequenceInput>(&seq, 1));
  FUZZ_CHECK(out.ok());
  FUZZ_CHECK(out->size() == 1);
  const core::SequenceOutput& o = (*out)[0];
  const uint32_t rows = request.pooling() == v1::POOLING_NONE ? L : 1;
  FUZZ_CHECK(o.rows == rows);
  FUZZ_CHECK(o.output.size() == size_t{rows} * m.config.d_model);
  // The reference engine computes in double and rounds the output to float
  // at the end: inputs near FLT_MAX legitimately overflow it (the tiny
  // models' output is at most about 16x the largest input); far below that,
  // nothing may.
  float largest = 0;
  for (float x : seq.data) largest = std::max(largest, std::fabs(x));
  if (largest <= 1e30f) FUZZ_CHECK(AllFinite(o.output.data(), o.output.size()));
  const size_t matrices = request.weights() == v1::WEIGHTS_PER_HEAD ? m.config.num_heads
                          : request.weights() == v1::WEIGHTS_MEAN  ? 1
                                                                   : 0;
  FUZZ_CHECK(o.attention.size() == matrices);
  for (const core::WeightsMatrix& w : o.attention) {
    FUZZ_CHECK(w.size() == size_t{L} * L);
    FUZZ_CHECK(AllFinite(w.data(), w.size()));
    if (m.config.normalization != core::Normalization::kSoftmax) continue;
    for (uint32_t i = 0; i < L; ++i) {  // softmax: a row sums to 1, or is all zeros
      double sum = 0;
      for (uint32_t j = 0; j < L; ++j) sum += w[size_t{i} * L + j];
      FUZZ_CHECK(std::fabs(sum - 1.0) < 1e-3 || sum == 0.0);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::AttendRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  for (const TinyModel& m : fuzz::TinyModels()) Check(m, request);
  return 0;
}
