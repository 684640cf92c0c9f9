// Fuzz target (a): AttendRequest wire bytes -> protobuf parse ->
// server::ValidateRequest against three tiny models (together: every
// positional encoding that bounds L, both relevances, both normalizations,
// with and without projections) -> for a request it accepts, one run on the
// reference engine. Properties: never crashes; a rejection is one of the
// codes of DESIGN.md's table for a malformed request, with a message; an
// accepted request's reply estimate is within the limit, and the engine
// answers it with the shapes the wire contract promises and finite values.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attnserve/v1/attention.pb.h"
#include "core/engine.h"
#include "core/model.h"
#include "server/validation.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace attnserve;

// Small enough that every accepted request computes in well under a
// millisecond: L <= max_length <= 24, d_model 8.
constexpr int64_t kMaxReplyBytes = 64 << 10;

struct TinyModel {
  std::string name;
  core::ModelConfig config;
  std::unique_ptr<core::Engine> reference;
};

// Deterministic weights in [-0.5, 0.5].
std::vector<float> Values(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (float& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(seed >> 8) / static_cast<float>(1u << 24) - 0.5f;
  }
  return v;
}

TinyModel Make(const std::string& name, core::Positional pos, core::Relevance rel,
               core::Normalization norm, bool projections, uint32_t max_length) {
  core::ModelConfig c;
  c.d_model = 8;
  c.num_heads = 2;
  c.positional = pos;
  c.max_length = max_length;
  c.relevance = rel;
  c.normalization = norm;
  c.projections = projections;
  c.scale = 0.5;
  auto model = std::make_shared<core::Model>();
  model->name = name;
  model->config = c;
  core::ModelWeights& w = model->weights;
  const size_t d = c.d_model;
  if (projections) {
    w.q_weight = Values(d * d, 1);
    w.k_weight = Values(d * d, 2);
    w.v_weight = Values(d * d, 3);
    w.out_weight = Values(d * d, 4);
    w.q_bias = Values(d, 5);
    w.k_bias = Values(d, 6);
    w.v_bias = Values(d, 7);
    w.out_bias = Values(d, 8);
  }
  if (pos == core::Positional::kLearned) w.pos_embedding = Values(max_length * d, 9);
  if (rel == core::Relevance::kAdditive) w.additive_v = Values(d, 10);
  FUZZ_CHECK(core::ValidateModelWeights(c, w, name).ok());
  absl::StatusOr<std::unique_ptr<core::Engine>> engine = core::CreateReferenceEngine(model);
  FUZZ_CHECK(engine.ok());
  return {name, c, *std::move(engine)};
}

std::vector<TinyModel>* Models() {
  static auto* models = new std::vector<TinyModel>([] {
    std::vector<TinyModel> m;
    m.push_back(Make("learned", core::Positional::kLearned, core::Relevance::kDot,
                     core::Normalization::kSoftmax, true, 16));
    m.push_back(Make("rotary", core::Positional::kRotary, core::Relevance::kAdditive,
                     core::Normalization::kRelu, true, 24));
    m.push_back(Make("plain", core::Positional::kNone, core::Relevance::kDot,
                     core::Normalization::kSoftmax, false, 24));
    return m;
  }());
  return models;
}

bool AllFinite(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) return false;
  }
  return true;
}

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
  FUZZ_CHECK(AllFinite(o.output.data(), o.output.size()));
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
  for (const TinyModel& m : *Models()) Check(m, request);
  return 0;
}
