#include "client/v2_client.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/tensor_io.h"

namespace attnserve::client {
namespace {

static_assert(std::endian::native == std::endian::little, "raw v2 tensors are little-endian");

uint16_t ToBf16(float x) {  // round to nearest even; finite inputs
  const uint32_t w = std::bit_cast<uint32_t>(x);
  return static_cast<uint16_t>((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}

template <typename T>
std::string Raw(const T* data, size_t n) {
  return std::string(reinterpret_cast<const char*>(data), n * sizeof(T));
}

void SetParam(inference::ModelInferRequest* r, const char* name, inference::InferParameter p) {
  (*r->mutable_parameters())[name] = std::move(p);
}

nlohmann::json ParameterJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam: return p.bool_param();
    case inference::InferParameter::kInt64Param: return p.int64_param();
    case inference::InferParameter::kStringParam: return p.string_param();
    case inference::InferParameter::kDoubleParam: return p.double_param();
    case inference::InferParameter::kUint64Param: return p.uint64_param();
    default: return nullptr;
  }
}

}  // namespace

uint16_t FloatToFp16(float x) {
  const uint32_t w = std::bit_cast<uint32_t>(x);
  const uint16_t sign = static_cast<uint16_t>((w >> 16) & 0x8000u);
  const uint32_t magnitude = w & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // infinity, or NaN (kept quiet, never turned into infinity)
    return sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u);
  }
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to above 65504: infinity
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent >= -14) {  // a normal half: drop 13 mantissa bits, to nearest even
    const uint32_t bits = ((static_cast<uint32_t>(exponent + 15) << 10) | ((magnitude >> 13) & 0x3ffu));
    const uint32_t rest = magnitude & 0x1fffu;
    const uint32_t up = rest > 0x1000u || (rest == 0x1000u && (bits & 1u)) ? 1u : 0u;
    return sign | static_cast<uint16_t>(bits + up);  // a carry moves into the exponent
  }
  if (exponent < -25) return sign;  // below half the smallest subnormal: zero
  // A subnormal half: the significand (with its leading 1) shifted into 2^-24 units.
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const int shift = -exponent - 1;  // 14..24: 2^exponent = 2^-24 << (exponent + 24)
  const uint32_t bits = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  const uint32_t up = rest > half || (rest == half && (bits & 1u)) ? 1u : 0u;
  return sign | static_cast<uint16_t>(bits + up);  // may round up to the smallest normal
}

absl::StatusOr<inference::ModelInferRequest> ToModelInfer(const v1::AttendRequest& request,
                                                          const std::string& datatype) {
  if (datatype != "FP32" && datatype != "BF16" && datatype != "FP16") {
    return absl::InvalidArgumentError(
        absl::StrCat("datatype '", datatype, "': expected FP32, BF16 or FP16"));
  }
  inference::ModelInferRequest r;
  r.set_model_name(request.model());
  r.set_id(request.request_id());
  auto* input = r.add_inputs();
  input->set_name("input");
  input->set_datatype(datatype);
  input->add_shape(request.input().rows());
  input->add_shape(request.input().cols());
  const auto& data = request.input().data();
  if (datatype == "FP32") {
    r.add_raw_input_contents(Raw(data.data(), data.size()));
  } else {
    std::vector<uint16_t> bits(data.size());
    for (int i = 0; i < data.size(); ++i) {
      bits[i] = datatype == "BF16" ? ToBf16(data[i]) : FloatToFp16(data[i]);
    }
    r.add_raw_input_contents(Raw(bits.data(), bits.size()));
  }
  inference::InferParameter p;
  if (request.mask().causal()) {
    p.set_bool_param(true);
    SetParam(&r, "causal", p);
  }
  if (request.mask().window() > 0) {
    p.set_int64_param(request.mask().window());
    SetParam(&r, "window", p);
  }
  static const char* kWeights[] = {"none", "per_head", "mean"};
  static const char* kPooling[] = {"none", "mean", "first"};
  if (request.weights() > v1::WEIGHTS_NONE && request.weights() <= v1::WEIGHTS_MEAN) {
    p.set_string_param(kWeights[request.weights()]);
    SetParam(&r, "weights", p);
  }
  if (request.pooling() > v1::POOLING_NONE && request.pooling() <= v1::POOLING_FIRST) {
    p.set_string_param(kPooling[request.pooling()]);
    SetParam(&r, "pooling", p);
  }
  if (request.mask().edges_size() > 0) {
    if (request.mask().edges_size() % 2 != 0) {
      return absl::InvalidArgumentError("edges: an odd number of values; give (i, j) pairs");
    }
    auto* edges = r.add_inputs();
    edges->set_name("edges");
    edges->set_datatype("INT64");
    edges->add_shape(request.mask().edges_size() / 2);
    edges->add_shape(2);
    std::vector<int64_t> v(request.mask().edges().begin(), request.mask().edges().end());
    r.add_raw_input_contents(Raw(v.data(), v.size()));
  }
  return r;
}

std::string ModelInferJson(const inference::ModelInferResponse& reply) {
  nlohmann::json j = {{"model_name", reply.model_name()},
                      {"model_version", reply.model_version()},
                      {"id", reply.id()}};
  nlohmann::json params = nlohmann::json::object();
  for (const auto& [name, p] : reply.parameters()) params[name] = ParameterJson(p);
  j["parameters"] = params;
  nlohmann::json outputs = nlohmann::json::array();
  for (int i = 0; i < reply.outputs_size(); ++i) {
    const auto& t = reply.outputs(i);
    nlohmann::json o = {{"name", t.name()}, {"datatype", t.datatype()}};
    o["shape"] = std::vector<int64_t>(t.shape().begin(), t.shape().end());
    std::vector<float> data;
    if (i < reply.raw_output_contents_size() && t.datatype() == "FP32") {
      const std::string& raw = reply.raw_output_contents(i);
      data.resize(raw.size() / 4);
      std::memcpy(data.data(), raw.data(), data.size() * 4);
    } else if (t.has_contents()) {
      data.assign(t.contents().fp32_contents().begin(), t.contents().fp32_contents().end());
    }
    o["data"] = data;
    outputs.push_back(o);
  }
  j["outputs"] = outputs;
  return j.dump();
}

bool ScanModelInferReply(grpc::ByteBuffer* reply, v1::Stats* stats, uint32_t* output_floats) {
  using google::protobuf::internal::WireFormatLite;
  grpc::ProtoBufferReader reader(reply);
  google::protobuf::io::CodedInputStream in(&reader);
  std::string parameters;  // the parameters map entries, re-read below
  bool first_raw = true;
  for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool delimited =
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    uint32_t size = 0;
    if (delimited && field == inference::ModelInferResponse::kParametersFieldNumber) {
      std::string entry;
      if (!in.ReadVarint32(&size) || !in.ReadString(&entry, static_cast<int>(size))) return false;
      // Re-framed as field 4 of a message that holds nothing else.
      parameters.push_back(static_cast<char>(
          WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)));
      for (uint32_t n = size; ; n >>= 7) {
        parameters.push_back(static_cast<char>((n & 0x7f) | (n >= 0x80 ? 0x80 : 0)));
        if (n < 0x80) break;
      }
      parameters += entry;
    } else if (delimited && field == inference::ModelInferResponse::kRawOutputContentsFieldNumber &&
               first_raw) {
      if (!in.ReadVarint32(&size) || !in.Skip(static_cast<int>(size))) return false;
      *output_floats = size / 4;
      first_raw = false;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  if (!in.ConsumedEntireMessage()) return false;
  inference::ModelInferResponse params_only;
  if (!params_only.ParseFromString(parameters)) return false;
  auto get = [&](const char* name) -> uint64_t {
    auto it = params_only.parameters().find(name);
    return it == params_only.parameters().end() ? 0 : it->second.int64_param();
  };
  stats->set_queue_us(get("queue_us"));
  stats->set_compute_us(get("compute_us"));
  stats->set_batch_size(static_cast<uint32_t>(get("batch_size")));
  stats->set_batch_tokens(static_cast<uint32_t>(get("batch_tokens")));
  return true;
}

absl::StatusOr<LoadRequest> MakeV2LoadRequest(const v1::AttendRequest& request, uint32_t d_model,
                                              const std::string& datatype) {
  absl::StatusOr<inference::ModelInferRequest> r = ToModelInfer(request, datatype);
  if (!r.ok()) return r.status();
  LoadRequest load = MakeLoadRequest(request, d_model);
  load.bytes = r->SerializeAsString();
  load.v2 = true;
  return load;
}

namespace {

// An output the server sent is written to PREFIX<name>.npy only when its
// name is a plain file name (no path, so a hostile server cannot place files
// outside the prefix) and its FP32 shape accounts for its bytes exactly.
absl::Status CheckNpyOutput(const inference::ModelInferResponse::InferOutputTensor& t,
                            const std::string& raw) {
  const std::string& name = t.name();
  const bool plain = !name.empty() && name.size() <= 128 && name != "." && name != ".." &&
                     std::all_of(name.begin(), name.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                              c == '-' || c == '.';
                     });
  if (!plain) {
    return absl::DataLossError(absl::StrCat("the reply has an output named '",
                                            name.substr(0, 64),
                                            "', which is no plain file name; nothing written"));
  }
  if (t.datatype() != "FP32") {
    return absl::DataLossError(absl::StrCat("output '", name, "' is ", t.datatype().substr(0, 16),
                                            ", not FP32; nothing written"));
  }
  uint64_t elements = 1;
  bool fits = t.shape_size() <= 8;  // npy v1 headers are small
  for (int64_t d : t.shape()) {
    fits = fits && d >= 0 &&
           !__builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
  }
  if (!fits || elements > raw.size() / 4 || elements * 4 != raw.size()) {
    return absl::DataLossError(absl::StrCat("output '", name, "': shape of ", t.shape_size(),
                                            " dimensions does not match its ", raw.size(),
                                            " raw bytes; nothing written"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteModelInferNpy(const inference::ModelInferResponse& reply,
                                const std::string& prefix, std::vector<std::string>* paths) {
  for (int i = 0; i < reply.outputs_size() && i < reply.raw_output_contents_size(); ++i) {
    if (absl::Status s = CheckNpyOutput(reply.outputs(i), reply.raw_output_contents(i)); !s.ok()) {
      return s;
    }
  }
  for (int i = 0; i < reply.outputs_size() && i < reply.raw_output_contents_size(); ++i) {
    const auto& t = reply.outputs(i);
    NpyArray array;
    for (int64_t d : t.shape()) array.shape.push_back(static_cast<uint64_t>(d));
    const std::string& raw = reply.raw_output_contents(i);
    array.data.resize(raw.size() / 4);
    std::memcpy(array.data.data(), raw.data(), array.data.size() * 4);
    const std::string path = absl::StrCat(prefix, t.name(), ".npy");
    if (absl::Status s = WriteNpy(path, array); !s.ok()) return s;
    paths->push_back(path);
  }
  return absl::OkStatus();
}

V2Client::V2Client(AttentionClient* client)
    : client_(client), stub_(inference::GRPCInferenceService::NewStub(client->channel())) {}

template <typename Call>
grpc::Status V2Client::WithRetries(Call call) {
  const ClientOptions& o = client_->options();
  int64_t backoff_ms = o.retry_backoff_ms;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(o.deadline_ms));
    AddCallMetadata(o, &context);
    grpc::Status status = call(context);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt > o.max_retries) {
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms *= 2;
  }
}

grpc::Status V2Client::ModelMetadata(const std::string& model,
                                     inference::ModelMetadataResponse* reply) {
  inference::ModelMetadataRequest request;
  request.set_name(model);
  return WithRetries([&](grpc::ClientContext& context) {
    reply->Clear();
    return stub_->ModelMetadata(&context, request, reply);
  });
}

grpc::Status V2Client::ModelWidth(const std::string& model, std::string* name,
                                  uint32_t* d_model) {
  inference::ModelMetadataResponse meta;
  if (grpc::Status s = ModelMetadata(model, &meta); !s.ok()) return s;
  for (const auto& input : meta.inputs()) {
    if (input.name() == "input" && input.shape_size() > 0 && input.shape().rbegin()[0] > 0) {
      *name = meta.name();
      *d_model = static_cast<uint32_t>(input.shape().rbegin()[0]);
      return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      absl::StrCat("model '", meta.name(), "' has no input 'input' with a fixed ",
                                   "last dimension; is this an attnserve model?"));
}

grpc::Status V2Client::ModelInfer(const inference::ModelInferRequest& request,
                                  inference::ModelInferResponse* reply) {
  return WithRetries([&](grpc::ClientContext& context) {
    reply->Clear();
    return stub_->ModelInfer(&context, request, reply);
  });
}

}  // namespace attnserve::client
