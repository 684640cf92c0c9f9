// Fuzz target: KServe v2 ModelInferRequest wire bytes -> protobuf parse ->
// server::v2::PlanInfer against the three tiny models (tiny_models.h) with a
// small reply limit -> for a plan it accepts, LayOutResponse and, when B x L
// is small, one run on the reference engine written into the reply the way
// server/v2_service.cc does (output in place, attention by CopyAttention).
// Properties: never crashes; a rejection is INVALID_ARGUMENT, OUT_OF_RANGE
// (only for a model with a positional encoding) or RESOURCE_EXHAUSTED with a
// short message; an accepted plan matches the request (B, L, datatype,
// values, mask, weights, pooling, outputs as server/v2_request.h documents);
// the reply has the documented names, shapes and sizes, stays within the
// limit, holds sequence b's engine output in slice b, finite values (for
// inputs that cannot overflow float) and softmax attention rows summing to 1
// (or 0 for a row the mask empties).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "core/engine.h"
#include "inference/v2/open_inference.pb.h"
#include "server/v2_request.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tiny_models.h"

namespace {

using namespace attnserve;
using fuzz::AllFinite;
using fuzz::TinyModel;
using inference::InferParameter;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using server::v2::OutputKind;

// Small, so that RESOURCE_EXHAUSTED (reply over the limit, B x edges over it)
// is within reach of a few-KB input, and every layout stays small.
constexpr int64_t kMaxReplyBytes = 8 << 10;

// The longest message PlanInfer can produce: client strings go through
// ClipForMessage (at most 64 bytes plus "... (N bytes)") and shapes through
// ShapeString (at most 8 dimensions of 20 characters plus "... (N
// dimensions)"): the wrong-rank message with such a shape is 64 + 205 bytes.
constexpr size_t kMaxMessageBytes = 320;

// Engine runs only for small calls (well under a millisecond).
constexpr uint64_t kMaxRunTokens = 48;
constexpr uint32_t kMaxRunLength = 24;

// Inputs up to this magnitude must give finite outputs. The reference engine
// computes in double and rounds the output to float at the end, so inputs
// near FLT_MAX legitimately overflow to infinity (the tiny models' output is
// at most about 16 x the largest input: projections of 8 weights <= 0.5, a
// convex or relu-bounded mix of the values); far below that, nothing can.
constexpr float kFiniteInputBound = 1e30f;

const ModelInferRequest::InferInputTensor* FindInput(const ModelInferRequest& request,
                                                      const char* name, int* index) {
  for (int i = 0; i < request.inputs_size(); ++i) {
    if (request.inputs(i).name() == name) {
      *index = i;
      return &request.inputs(i);
    }
  }
  return nullptr;
}

// The parameter `name` of the request, else of input `input` (an accepted
// plan had both agree).
const InferParameter* Param(const ModelInferRequest& request,
                            const ModelInferRequest::InferInputTensor& input, const char* name) {
  if (auto it = request.parameters().find(name); it != request.parameters().end()) {
    return &it->second;
  }
  if (auto it = input.parameters().find(name); it != input.parameters().end()) {
    return &it->second;
  }
  return nullptr;
}

// FP16 as the specification defines it, independently of Fp16ToFloat.
double Fp16Reference(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa, -24)
                                         : std::ldexp(1024 + mantissa, exponent - 25);
  return sign ? -magnitude : magnitude;
}

float FloatAt(const std::string& raw, size_t i) {
  float f;
  std::memcpy(&f, raw.data() + 4 * i, 4);
  return f;
}

// The accepted plan against the request it came from.
void CheckPlan(const TinyModel& m, const ModelInferRequest& request,
               const server::v2::InferPlan& plan) {
  const uint32_t d = m.config.d_model;
  int input_index = -1;
  const auto* input = FindInput(request, server::v2::kInputName, &input_index);
  FUZZ_CHECK(input != nullptr);
  const int rank = input->shape_size();
  FUZZ_CHECK(rank == 2 || rank == 3);
  FUZZ_CHECK(input->shape(rank - 1) == d);
  FUZZ_CHECK(plan.batched == (rank == 3));
  FUZZ_CHECK(plan.batch >= 1 && plan.length >= 1);
  FUZZ_CHECK(plan.batch == (rank == 3 ? input->shape(0) : 1));
  FUZZ_CHECK(plan.length == input->shape(rank - 2));
  if (m.config.positional != core::Positional::kNone) {
    FUZZ_CHECK(plan.length <= m.config.max_length);
  }
  FUZZ_CHECK(plan.input_datatype == "FP32" || plan.input_datatype == "BF16" ||
             plan.input_datatype == "FP16");
  FUZZ_CHECK(plan.input_datatype == input->datatype());
  FUZZ_CHECK(plan.sequences.size() == plan.batch);

  // The values, as sent.
  const size_t per_sequence = size_t{plan.length} * d;
  const bool raw = request.raw_input_contents_size() > 0;
  FUZZ_CHECK(!raw || request.raw_input_contents_size() == request.inputs_size());
  const std::string* bytes = raw ? &request.raw_input_contents(input_index) : nullptr;
  FUZZ_CHECK(raw || plan.input_datatype == "FP32");
  const size_t width = plan.input_datatype == "FP32" ? 4 : 2;
  FUZZ_CHECK(!raw || bytes->size() == width * per_sequence * plan.batch);
  FUZZ_CHECK(raw || static_cast<size_t>(input->contents().fp32_contents_size()) ==
                        per_sequence * plan.batch);
  for (uint32_t b = 0; b < plan.batch; ++b) {
    const core::SequenceInput& s = plan.sequences[b];
    FUZZ_CHECK(s.length == plan.length);
    FUZZ_CHECK(s.data.size() == per_sequence);
    FUZZ_CHECK(s.values_checked);
    FUZZ_CHECK(s.output_buffer.empty());
    FUZZ_CHECK(AllFinite(s.data.data(), s.data.size()));
    for (size_t i = 0; i < per_sequence; ++i) {
      const size_t k = b * per_sequence + i;
      const float got = s.data[i];
      if (!raw) {
        FUZZ_CHECK(got == input->contents().fp32_contents(static_cast<int>(k)));
      } else if (width == 4) {
        FUZZ_CHECK(std::memcmp(&got, bytes->data() + 4 * k, 4) == 0);
      } else {
        const uint16_t bits = static_cast<uint16_t>(
            static_cast<unsigned char>((*bytes)[2 * k]) |
            static_cast<unsigned char>((*bytes)[2 * k + 1]) << 8);
        if (plan.input_datatype == "BF16") {
          uint32_t f;
          std::memcpy(&f, &got, 4);
          FUZZ_CHECK(f == uint32_t{bits} << 16);
        } else {
          FUZZ_CHECK(static_cast<double>(got) == Fp16Reference(bits));
        }
      }
    }
  }

  // Mask, weights and pooling: the parameters, or their defaults.
  const InferParameter* causal = Param(request, *input, "causal");
  const InferParameter* window = Param(request, *input, "window");
  const InferParameter* weights = Param(request, *input, "weights");
  const InferParameter* pooling = Param(request, *input, "pooling");
  const bool want_causal = causal != nullptr && causal->bool_param();
  const uint64_t want_window =
      window == nullptr ? 0
      : window->parameter_choice_case() == InferParameter::kInt64Param
          ? static_cast<uint64_t>(window->int64_param())
          : window->uint64_param();
  const core::Pooling want_pooling =
      pooling == nullptr || pooling->string_param() == "none" ? core::Pooling::kNone
      : pooling->string_param() == "mean"                     ? core::Pooling::kMean
                                                              : core::Pooling::kFirst;
  FUZZ_CHECK(pooling == nullptr || pooling->string_param() == "none" ||
             pooling->string_param() == "mean" || pooling->string_param() == "first");
  core::WeightsMode want_weights =
      weights == nullptr || weights->string_param() == "none" ? core::WeightsMode::kNone
      : weights->string_param() == "per_head"                 ? core::WeightsMode::kPerHead
                                                              : core::WeightsMode::kMean;

  // Outputs: the requested ones in order, else output (+ attention).
  std::vector<OutputKind> want_outputs;
  if (request.outputs_size() == 0) {
    want_outputs.push_back(OutputKind::kOutput);
    if (want_weights != core::WeightsMode::kNone) want_outputs.push_back(OutputKind::kAttention);
  } else {
    bool attention = false;
    for (const auto& o : request.outputs()) {
      FUZZ_CHECK(o.name() == server::v2::kOutputName || o.name() == server::v2::kAttentionName);
      const bool is_attention = o.name() == server::v2::kAttentionName;
      want_outputs.push_back(is_attention ? OutputKind::kAttention : OutputKind::kOutput);
      attention = attention || is_attention;
    }
    if (!attention) {
      want_weights = core::WeightsMode::kNone;
    } else {
      FUZZ_CHECK(want_weights != core::WeightsMode::kNone || weights == nullptr);
      if (weights == nullptr) want_weights = core::WeightsMode::kPerHead;
    }
  }
  FUZZ_CHECK(!plan.outputs.empty() && plan.outputs.size() <= 2);
  FUZZ_CHECK(plan.outputs == want_outputs);
  if (plan.outputs.size() == 2) FUZZ_CHECK(plan.outputs[0] != plan.outputs[1]);

  // Edges: as sent, for every sequence.
  int edges_index = -1;
  const auto* edges = FindInput(request, server::v2::kEdgesName, &edges_index);
  std::vector<int64_t> want_edges;
  if (edges != nullptr) {
    const bool i32 = edges->datatype() == "INT32";
    FUZZ_CHECK(i32 || edges->datatype() == "INT64");
    if (raw) {
      const std::string& e = request.raw_input_contents(edges_index);
      const size_t w = i32 ? 4 : 8;
      for (size_t i = 0; i < e.size() / w; ++i) {
        int64_t v = 0;
        if (i32) {
          int32_t x;
          std::memcpy(&x, e.data() + 4 * i, 4);
          v = x;
        } else {
          std::memcpy(&v, e.data() + 8 * i, 8);
        }
        want_edges.push_back(v);
      }
    } else if (i32) {
      want_edges.assign(edges->contents().int_contents().begin(),
                        edges->contents().int_contents().end());
    } else {
      want_edges.assign(edges->contents().int64_contents().begin(),
                        edges->contents().int64_contents().end());
    }
    FUZZ_CHECK(static_cast<int64_t>(want_edges.size()) == 2 * edges->shape(0));
  }
  for (const core::SequenceInput& s : plan.sequences) {
    FUZZ_CHECK(s.mask.causal == want_causal);
    FUZZ_CHECK(s.mask.window == want_window);
    FUZZ_CHECK(s.weights == want_weights);
    FUZZ_CHECK(s.pooling == want_pooling);
    FUZZ_CHECK(s.mask.edges.size() == want_edges.size());
    for (size_t i = 0; i < want_edges.size(); ++i) {
      FUZZ_CHECK(s.mask.edges[i] == want_edges[i]);
      FUZZ_CHECK(s.mask.edges[i] < plan.length);
    }
  }
}

// The laid-out reply's tensors, as server/v2_request.h documents them.
void CheckLayout(const TinyModel& m, const server::v2::InferPlan& plan,
                 const ModelInferResponse& response, const std::string* attention_raw) {
  const core::SequenceInput& first = plan.sequences.front();
  const int64_t rows = first.pooling == core::Pooling::kNone ? plan.length : 1;
  FUZZ_CHECK(response.outputs_size() == static_cast<int>(plan.outputs.size()));
  FUZZ_CHECK(response.raw_output_contents_size() == response.outputs_size());
  const std::string* found_attention = nullptr;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& t = response.outputs(i);
    FUZZ_CHECK(t.datatype() == "FP32");
    FUZZ_CHECK(!t.has_contents());
    std::vector<int64_t> want;
    if (plan.batched) want.push_back(plan.batch);
    if (plan.outputs[i] == OutputKind::kOutput) {
      FUZZ_CHECK(t.name() == server::v2::kOutputName);
      want.push_back(rows);
      want.push_back(m.config.d_model);
    } else {
      FUZZ_CHECK(t.name() == server::v2::kAttentionName);
      FUZZ_CHECK(first.weights != core::WeightsMode::kNone);
      if (first.weights == core::WeightsMode::kPerHead) want.push_back(m.config.num_heads);
      want.push_back(plan.length);
      want.push_back(plan.length);
      found_attention = &response.raw_output_contents(i);
    }
    FUZZ_CHECK(std::vector<int64_t>(t.shape().begin(), t.shape().end()) == want);
    uint64_t elements = 1;
    for (int64_t dim : want) elements *= static_cast<uint64_t>(dim);
    FUZZ_CHECK(response.raw_output_contents(i).size() == 4 * elements);
  }
  FUZZ_CHECK(attention_raw == found_attention);
  for (uint32_t b = 0; b < plan.batch; ++b) {
    FUZZ_CHECK(plan.sequences[b].output_buffer.size() ==
               static_cast<size_t>(rows) * m.config.d_model);
  }
}

void Check(const TinyModel& m, const ModelInferRequest& request) {
  server::v2::InferPlan plan;
  const grpc::Status status =
      server::v2::PlanInfer(request, m.name, m.config, kMaxReplyBytes, &plan);
  if (!status.ok()) {
    const grpc::StatusCode code = status.error_code();
    FUZZ_CHECK(code == grpc::StatusCode::INVALID_ARGUMENT ||
               code == grpc::StatusCode::OUT_OF_RANGE ||
               code == grpc::StatusCode::RESOURCE_EXHAUSTED);
    FUZZ_CHECK(code != grpc::StatusCode::OUT_OF_RANGE ||
               m.config.positional != core::Positional::kNone);
    FUZZ_CHECK(!status.error_message().empty());
    if (status.error_message().size() > kMaxMessageBytes) {
      std::fprintf(stderr, "message of %zu bytes: %s\n", status.error_message().size(),
                   status.error_message().c_str());
    }
    FUZZ_CHECK(status.error_message().size() <= kMaxMessageBytes);
    return;
  }
  CheckPlan(m, request, plan);

  // The reply, as the service builds it: accepted plans fit kMaxReplyBytes,
  // so laying it out is cheap whatever B and L.
  ModelInferResponse response;
  response.set_model_name(m.name);
  response.set_model_version("0123456789ab");  // a content version: 12 hex digits
  response.set_id(request.id());
  std::vector<float> scratch;
  std::string* attention = server::v2::LayOutResponse(m.config, &plan, &response, &scratch);
  CheckLayout(m, plan, response, attention);
  int output_index = -1;
  for (size_t i = 0; i < plan.outputs.size(); ++i) {
    if (plan.outputs[i] == OutputKind::kOutput) output_index = static_cast<int>(i);
  }
  const bool output_from_scratch = output_index >= 0 && !scratch.empty();

  const uint64_t tokens = uint64_t{plan.batch} * plan.length;
  if (tokens <= kMaxRunTokens && plan.length <= kMaxRunLength) {
    // The same sequences without output_buffer: the engine's own answer for
    // each, to compare with what lands in the reply.
    std::vector<core::SequenceInput> own(plan.sequences);
    for (core::SequenceInput& s : own) s.output_buffer = {};
    absl::StatusOr<std::vector<core::SequenceOutput>> expected =
        m.reference->Run(std::span<const core::SequenceInput>(own));
    FUZZ_CHECK(expected.ok());
    absl::StatusOr<std::vector<core::SequenceOutput>> out =
        m.reference->Run(std::span<const core::SequenceInput>(plan.sequences));
    FUZZ_CHECK(out.ok());
    FUZZ_CHECK(out->size() == plan.batch && expected->size() == plan.batch);
    const size_t per_output = plan.sequences[0].output_buffer.size();
    for (uint32_t b = 0; b < plan.batch; ++b) {
      const core::SequenceOutput& o = (*out)[b];
      FUZZ_CHECK(o.status.ok() && (*expected)[b].status.ok());
      FUZZ_CHECK(o.output.empty());  // written into the reply (or scratch)
      FUZZ_CHECK(o.rows * size_t{m.config.d_model} == per_output);
      FUZZ_CHECK((*expected)[b].output.size() == per_output);
      if (attention != nullptr) server::v2::CopyAttention(o, b, plan.length, attention);
    }
    if (output_from_scratch) {
      std::string* raw = response.mutable_raw_output_contents(output_index);
      FUZZ_CHECK(raw->size() == 4 * scratch.size());
      std::memcpy(raw->data(), scratch.data(), raw->size());
    }
    if (output_index >= 0) {  // slice b of `output` is sequence b's output
      const std::string& raw = response.raw_output_contents(output_index);
      for (uint32_t b = 0; b < plan.batch; ++b) {
        FUZZ_CHECK(std::memcmp(raw.data() + 4 * b * per_output, (*expected)[b].output.data(),
                               4 * per_output) == 0);
      }
      float largest = 0;
      for (const core::SequenceInput& s : plan.sequences) {
        for (float x : s.data) largest = std::max(largest, std::fabs(x));
      }
      if (largest <= kFiniteInputBound) {
        FUZZ_CHECK(AllFinite(reinterpret_cast<const float*>(raw.data()), raw.size() / 4));
      }
    }
    if (attention != nullptr) {
      const uint32_t L = plan.length;
      const size_t matrices = attention->size() / (4 * size_t{L} * L);
      FUZZ_CHECK(!(*out)[0].attention.empty());
      FUZZ_CHECK(matrices == plan.batch * (*out)[0].attention.size());
      const size_t per_batch = matrices / plan.batch;
      for (size_t k = 0; k < matrices; ++k) {
        const size_t base = k * L * L;
        // Matrix k is sequence k / per_batch's matrix k % per_batch.
        const core::WeightsMatrix& w = (*expected)[k / per_batch].attention[k % per_batch];
        FUZZ_CHECK(w.size() == size_t{L} * L);
        FUZZ_CHECK(std::memcmp(attention->data() + 4 * base, w.data(), 4 * w.size()) == 0);
        for (uint32_t i = 0; i < L; ++i) {
          double sum = 0;
          for (uint32_t j = 0; j < L; ++j) {
            const float x = FloatAt(*attention, base + size_t{i} * L + j);
            FUZZ_CHECK(std::isfinite(x));
            sum += x;
          }
          if (m.config.normalization == core::Normalization::kSoftmax) {
            FUZZ_CHECK(std::fabs(sum - 1.0) < 1e-3 || sum == 0.0);
          }
        }
      }
    }
  }

  // The whole reply, stats included, within the limit PlanInfer enforced.
  for (const char* stat : {"queue_us", "compute_us", "batch_size", "batch_tokens"}) {
    (*response.mutable_parameters())[stat].set_int64_param(std::numeric_limits<int64_t>::max());
  }
  FUZZ_CHECK(response.ByteSizeLong() <= static_cast<size_t>(kMaxReplyBytes));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  for (const TinyModel& m : fuzz::TinyModels()) Check(m, request);
  return 0;
}
