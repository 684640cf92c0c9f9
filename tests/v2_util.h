// Helpers for the KServe v2 (Open Inference Protocol) tests: building
// ModelInferRequests, encoding 16-bit floats independently of the server's
// decoder, and turning one sequence of a v2 call into the attnserve.v1
// request/reply pair ReferenceOracle checks.
#ifndef ATTNSERVE_TESTS_V2_UTIL_H_
#define ATTNSERVE_TESTS_V2_UTIL_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "attnserve/v1/attention.pb.h"
#include "inference/v2/open_inference.grpc.pb.h"
#include "tests/e2e_util.h"

namespace attnserve::testing::v2 {

using Param = std::variant<bool, int64_t, std::string>;

// bf16 bits of `x`, rounded to nearest even (finite inputs).
inline uint16_t ToBf16(float x) {
  const uint32_t w = std::bit_cast<uint32_t>(x);
  return static_cast<uint16_t>((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}
inline float FromBf16(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }
// IEEE half via the compiler's _Float16 (an implementation the server's
// decoder does not share).
inline uint16_t ToFp16(float x) { return std::bit_cast<uint16_t>(static_cast<_Float16>(x)); }
inline float FromFp16(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }

template <typename T>
std::string RawBytes(const std::vector<T>& values) {
  std::string raw(values.size() * sizeof(T), '\0');
  std::memcpy(raw.data(), values.data(), raw.size());
  return raw;
}

inline inference::InferParameter ToParameter(const Param& p) {
  inference::InferParameter out;
  if (const bool* b = std::get_if<bool>(&p)) out.set_bool_param(*b);
  if (const int64_t* i = std::get_if<int64_t>(&p)) out.set_int64_param(*i);
  if (const std::string* s = std::get_if<std::string>(&p)) out.set_string_param(*s);
  return out;
}

// A request whose input `input` of `shape` carries `values` as `datatype`
// (FP32 raw or contents; BF16/FP16 raw). *decoded receives the values the
// server sees (rounded to the 16-bit type).
inline inference::ModelInferRequest MakeInfer(const std::string& model,
                                             const std::vector<int64_t>& shape,
                                             const std::vector<float>& values,
                                             const std::string& datatype, bool raw,
                                             const std::map<std::string, Param>& params = {},
                                             std::vector<float>* decoded = nullptr) {
  inference::ModelInferRequest r;
  r.set_model_name(model);
  for (const auto& [name, p] : params) (*r.mutable_parameters())[name] = ToParameter(p);
  auto* t = r.add_inputs();
  t->set_name("input");
  t->set_datatype(datatype);
  for (int64_t d : shape) t->add_shape(d);
  std::vector<float> seen = values;
  if (datatype == "FP32" && !raw) {
    t->mutable_contents()->mutable_fp32_contents()->Add(values.begin(), values.end());
  } else if (datatype == "FP32") {
    r.add_raw_input_contents(RawBytes(values));
  } else {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      bits[i] = datatype == "BF16" ? ToBf16(values[i]) : ToFp16(values[i]);
      seen[i] = datatype == "BF16" ? FromBf16(bits[i]) : FromFp16(bits[i]);
    }
    r.add_raw_input_contents(RawBytes(bits));
  }
  if (decoded != nullptr) *decoded = std::move(seen);
  return r;
}

// Adds input `edges` ([E, 2]) as INT32 or INT64, raw when the request is raw.
inline void AddEdges(const std::vector<uint32_t>& edges, const std::string& datatype,
                     inference::ModelInferRequest* r) {
  auto* t = r->add_inputs();
  t->set_name("edges");
  t->set_datatype(datatype);
  t->add_shape(static_cast<int64_t>(edges.size() / 2));
  t->add_shape(2);
  const bool raw = r->raw_input_contents_size() > 0;
  if (datatype == "INT32") {
    std::vector<int32_t> v(edges.begin(), edges.end());
    if (raw) r->add_raw_input_contents(RawBytes(v));
    else t->mutable_contents()->mutable_int_contents()->Add(v.begin(), v.end());
  } else {
    std::vector<int64_t> v(edges.begin(), edges.end());
    if (raw) r->add_raw_input_contents(RawBytes(v));
    else t->mutable_contents()->mutable_int64_contents()->Add(v.begin(), v.end());
  }
}

inline grpc::Status CallInfer(inference::GRPCInferenceService::Stub& stub,
                              const inference::ModelInferRequest& request,
                              inference::ModelInferResponse* reply, int64_t deadline_ms = 20000) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(deadline_ms));
  return stub.ModelInfer(&context, request, reply);
}

// Sequence `b` of a v2 call as the attnserve.v1 request it is equivalent to.
struct V1Pair {
  v1::AttendRequest request;
  v1::AttendResponse reply;
};

inline int OutputIndex(const inference::ModelInferResponse& r, const std::string& name) {
  for (int i = 0; i < r.outputs_size(); ++i) {
    if (r.outputs(i).name() == name) return i;
  }
  return -1;
}

inline std::vector<float> RawFloats(const std::string& raw) {
  std::vector<float> v(raw.size() / 4);
  std::memcpy(v.data(), raw.data(), v.size() * 4);
  return v;
}

// `seen`: the decoded input of the whole call; L, d its sequence shape;
// `mask`, `weights`, `pooling`: what the call asked for.
inline V1Pair SequenceAsV1(const std::vector<float>& seen, uint32_t b, uint32_t L, uint32_t d,
                           const v1::Mask& mask, v1::WeightsMode weights, v1::Pooling pooling,
                           const inference::ModelInferResponse& reply) {
  V1Pair p;
  v1::Matrix* in = p.request.mutable_input();
  in->set_rows(L);
  in->set_cols(d);
  in->mutable_data()->Add(seen.begin() + size_t{b} * L * d, seen.begin() + size_t{b + 1} * L * d);
  *p.request.mutable_mask() = mask;
  p.request.set_weights(weights);
  p.request.set_pooling(pooling);
  p.reply.set_request_id(reply.id());
  if (int i = OutputIndex(reply, "output"); i >= 0) {
    const std::vector<float> all = RawFloats(reply.raw_output_contents(i));
    const uint32_t rows = pooling == v1::POOLING_NONE ? L : 1;
    const size_t n = size_t{rows} * d;
    p.reply.mutable_output()->set_rows(rows);
    p.reply.mutable_output()->set_cols(d);
    if (all.size() >= (b + 1) * n) {
      p.reply.mutable_output()->mutable_data()->Add(all.begin() + b * n, all.begin() + (b + 1) * n);
    }
  }
  if (int i = OutputIndex(reply, "attention"); i >= 0) {
    const std::vector<float> all = RawFloats(reply.raw_output_contents(i));
    const auto& shape = reply.outputs(i).shape();
    const size_t mats_per_seq = weights == v1::WEIGHTS_PER_HEAD ? shape[shape.size() - 3] : 1;
    const size_t n = size_t{L} * L;
    for (size_t m = 0; m < mats_per_seq; ++m) {
      const size_t at = (b * mats_per_seq + m) * n;
      if (all.size() < at + n) break;
      v1::Matrix* a = p.reply.add_attention();
      a->set_rows(L);
      a->set_cols(L);
      a->mutable_data()->Add(all.begin() + at, all.begin() + at + n);
    }
  }
  return p;
}

inline int64_t Stat(const inference::ModelInferResponse& r, const std::string& name) {
  auto it = r.parameters().find(name);
  return it == r.parameters().end() ? -1 : it->second.int64_param();
}

}  // namespace attnserve::testing::v2

#endif  // ATTNSERVE_TESTS_V2_UTIL_H_
