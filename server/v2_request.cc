#include "server/v2_request.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::server::v2 {
namespace {

// Raw tensor bytes are little-endian: on this host they are read in place.
static_assert(std::endian::native == std::endian::little,
              "raw v2 tensors are little-endian; a big-endian host needs byte swaps");

using inference::InferParameter;
using inference::ModelInferRequest;
using Tensor = ModelInferRequest::InferInputTensor;

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

using v2::ClipForMessage;
std::string Clip(const std::string& text) { return ClipForMessage(text); }

// The shape as the client sent it, at most kShownDims dimensions of it (a
// shape is client input: the message must stay small).
std::string ShapeString(const google::protobuf::RepeatedField<int64_t>& shape) {
  constexpr int kShownDims = 8;
  if (shape.size() <= kShownDims) return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.begin() + kShownDims, ", "),
                      ", ... (", shape.size(), " dimensions)]");
}

// The element count of `shape`; INVALID_ARGUMENT for a dimension < 1 (empty
// tensors carry nothing to compute) or a product over 2^63.
grpc::Status Elements(const Tensor& t, bool allow_zero_rows, uint64_t* count) {
  uint64_t n = 1;
  for (int i = 0; i < t.shape_size(); ++i) {
    const int64_t dim = t.shape(i);
    if (dim < 0 || (dim == 0 && !(allow_zero_rows && i == 0))) {
      return Invalid(absl::StrCat("input '", Clip(t.name()), "': shape ", ShapeString(t.shape()),
                                  " has dimension ", i, " = ", dim,
                                  "; every dimension must be >= 1"));
    }
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(dim), &n) ||
        n > uint64_t{std::numeric_limits<int64_t>::max()}) {
      return Invalid(absl::StrCat("input '", Clip(t.name()), "': shape ", ShapeString(t.shape()),
                                  " has more elements than any message can carry"));
    }
  }
  *count = n;
  return grpc::Status::OK;
}

// Where one tensor's data is: raw bytes, or its typed contents.
struct TensorData {
  const std::string* raw = nullptr;  // set when the request uses raw contents
  const Tensor* tensor = nullptr;
};

// Raw bytes must be exactly elements x element size.
grpc::Status CheckRawSize(const Tensor& t, const std::string& raw, uint64_t elements,
                          uint64_t element_bytes) {
  uint64_t want = 0;
  if (__builtin_mul_overflow(elements, element_bytes, &want) || raw.size() != want) {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': raw_input_contents has ", raw.size(),
                                " bytes; shape ", ShapeString(t.shape()), " of ",
                                Clip(t.datatype()),
                                " needs ", elements, " x ", element_bytes, " = ", want));
  }
  return grpc::Status::OK;
}

grpc::Status CountMismatch(const Tensor& t, const char* field, int64_t got, uint64_t want) {
  return Invalid(absl::StrCat("input '", Clip(t.name()), "': contents.", field, " has ", got,
                              " values; shape ", ShapeString(t.shape()), " needs ", want));
}

// ---- Parameters. ----

struct Params {
  std::optional<bool> causal;
  std::optional<uint32_t> window;
  std::optional<core::WeightsMode> weights;
  std::optional<core::Pooling> pooling;
};

std::string Where(const std::string& tensor) {
  return tensor.empty() ? "parameter" : absl::StrCat("input '", tensor, "': parameter");
}

grpc::Status ParseOne(const std::string& tensor, const std::string& name, const InferParameter& p,
                      Params* out) {
  const std::string where = absl::StrCat(Where(tensor), " '", name, "'");
  if (name == "causal") {
    if (p.parameter_choice_case() != InferParameter::kBoolParam) {
      return Invalid(absl::StrCat(where, " must be a bool_param"));
    }
    out->causal = p.bool_param();
  } else if (name == "window") {
    int64_t w = -1;
    if (p.parameter_choice_case() == InferParameter::kInt64Param) w = p.int64_param();
    if (p.parameter_choice_case() == InferParameter::kUint64Param &&
        p.uint64_param() <= uint64_t{std::numeric_limits<uint32_t>::max()}) {
      w = static_cast<int64_t>(p.uint64_param());
    }
    if (p.parameter_choice_case() != InferParameter::kInt64Param &&
        p.parameter_choice_case() != InferParameter::kUint64Param) {
      return Invalid(absl::StrCat(where, " must be an int64_param or uint64_param"));
    }
    if (w < 0 || w > int64_t{std::numeric_limits<uint32_t>::max()}) {
      return Invalid(absl::StrCat(where, " must be in [0, 4294967295] (0 = unlimited)"));
    }
    out->window = static_cast<uint32_t>(w);
  } else if (name == "weights" || name == "pooling") {
    if (p.parameter_choice_case() != InferParameter::kStringParam) {
      return Invalid(absl::StrCat(where, " must be a string_param"));
    }
    const std::string& v = p.string_param();
    if (name == "weights") {
      if (v == "none") out->weights = core::WeightsMode::kNone;
      else if (v == "per_head") out->weights = core::WeightsMode::kPerHead;
      else if (v == "mean") out->weights = core::WeightsMode::kMean;
      else return Invalid(absl::StrCat(where, " is '", Clip(v),
                                        "'; expected none, per_head or mean"));
    } else {
      if (v == "none") out->pooling = core::Pooling::kNone;
      else if (v == "mean") out->pooling = core::Pooling::kMean;
      else if (v == "first") out->pooling = core::Pooling::kFirst;
      else return Invalid(absl::StrCat(where, " is '", Clip(v), "'; expected none, mean or first"));
    }
  }
  // Any other name is ignored, as Triton ignores parameters it does not use.
  return grpc::Status::OK;
}

// The request's parameters, then input `input`'s; a name given in both
// places must have the same value.
grpc::Status ParseParams(const ModelInferRequest& request, const Tensor* input, Params* out) {
  for (const auto& [name, p] : request.parameters()) {
    if (grpc::Status s = ParseOne("", name, p, out); !s.ok()) return s;
  }
  if (input == nullptr) return grpc::Status::OK;
  Params tensor;
  for (const auto& [name, p] : input->parameters()) {
    if (grpc::Status s = ParseOne(input->name(), name, p, &tensor); !s.ok()) return s;
  }
  auto merge = [](auto& mine, const auto& theirs, const char* name) -> grpc::Status {
    if (!theirs.has_value()) return grpc::Status::OK;
    if (mine.has_value() && *mine != *theirs) {
      return Invalid(absl::StrCat("parameter '", name, "' is given on the request and on input '",
                                  kInputName, "' with different values"));
    }
    mine = theirs;
    return grpc::Status::OK;
  };
  for (grpc::Status s : {merge(out->causal, tensor.causal, "causal"),
                         merge(out->window, tensor.window, "window"),
                         merge(out->weights, tensor.weights, "weights"),
                         merge(out->pooling, tensor.pooling, "pooling")}) {
    if (!s.ok()) return s;
  }
  return grpc::Status::OK;
}

// ---- Tensors. ----

// Finds `input` and `edges`, and where each one's data is.
grpc::Status FindInputs(const ModelInferRequest& request, TensorData* input, TensorData* edges) {
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return Invalid(absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(),
                                " entries for ", request.inputs_size(),
                                " inputs; it needs one per input, in input order"));
  }
  for (int i = 0; i < request.inputs_size(); ++i) {
    const Tensor& t = request.inputs(i);
    if (raw && t.has_contents() && t.contents().ByteSizeLong() > 0) {
      return Invalid(absl::StrCat("input '", Clip(t.name()),
                                  "' has contents while the request uses ",
                                  "raw_input_contents; send every input one way or the other"));
    }
    TensorData* slot = t.name() == kInputName ? input : t.name() == kEdgesName ? edges : nullptr;
    if (slot == nullptr) {
      return Invalid(absl::StrCat("unknown input '", Clip(t.name()), "'; expected '", kInputName,
                                  "' and optionally '", kEdgesName, "'"));
    }
    if (slot->tensor != nullptr) {
      return Invalid(absl::StrCat("input '", Clip(t.name()), "' given twice"));
    }
    slot->tensor = &t;
    if (raw) slot->raw = &request.raw_input_contents(i);
  }
  if (input->tensor == nullptr) {
    return Invalid(absl::StrCat("missing input '", kInputName, "' (FP32, BF16 or FP16, shape ",
                                "[L, d_model] or [B, L, d_model])"));
  }
  return grpc::Status::OK;
}

// Checks input `input`'s datatype, shape and size; fills batch, length and
// the sequences' data (viewing raw FP32 in place, decoding 16-bit types).
grpc::Status ReadInput(const TensorData& d, const core::ModelConfig& config, InferPlan* plan) {
  const Tensor& t = *d.tensor;
  const std::string& type = t.datatype();
  if (type != "FP32" && type != "BF16" && type != "FP16") {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': datatype '", Clip(type),
                                "' is not supported; expected FP32, BF16 or FP16"));
  }
  const int rank = t.shape_size();
  if ((rank != 2 && rank != 3) || t.shape(rank - 1) != config.d_model) {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': shape ", ShapeString(t.shape()),
                                "; expected [L, ", config.d_model, "] or [B, L, ", config.d_model,
                                "] (d_model = ", config.d_model, ")"));
  }
  uint64_t elements = 0;
  if (grpc::Status s = Elements(t, false, &elements); !s.ok()) return s;
  const int64_t batch = rank == 3 ? t.shape(0) : 1;
  const int64_t length = t.shape(rank - 2);
  if (batch > std::numeric_limits<uint32_t>::max() || length > std::numeric_limits<uint32_t>::max()) {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': shape ", ShapeString(t.shape()),
                                " is too large (B and L must be < 2^32)"));
  }
  const float* data = nullptr;
  if (type == "FP32") {
    if (d.raw != nullptr) {
      if (grpc::Status s = CheckRawSize(t, *d.raw, elements, 4); !s.ok()) return s;
      data = reinterpret_cast<const float*>(d.raw->data());
      if (reinterpret_cast<uintptr_t>(data) % alignof(float) != 0) {  // never seen; be safe
        plan->decoded.resize(elements);
        std::memcpy(plan->decoded.data(), d.raw->data(), d.raw->size());
        data = plan->decoded.data();
      }
    } else {
      const auto& values = t.contents().fp32_contents();
      if (static_cast<uint64_t>(values.size()) != elements) {
        return CountMismatch(t, "fp32_contents", values.size(), elements);
      }
      data = values.data();
    }
  } else {
    if (d.raw == nullptr) {
      return Invalid(absl::StrCat("input '", Clip(t.name()), "': ", type,
                                  " travels only in raw_input_contents (the protocol has no ",
                                  "16-bit contents field)"));
    }
    if (grpc::Status s = CheckRawSize(t, *d.raw, elements, 2); !s.ok()) return s;
    plan->decoded.resize(elements);
    const auto* bytes = reinterpret_cast<const unsigned char*>(d.raw->data());
    const bool bf16 = type == "BF16";
    for (uint64_t i = 0; i < elements; ++i) {
      const uint16_t bits = static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
      plan->decoded[i] = bf16 ? Bf16ToFloat(bits) : Fp16ToFloat(bits);
    }
    data = plan->decoded.data();
  }
  plan->batch = static_cast<uint32_t>(batch);
  plan->batched = rank == 3;
  plan->length = static_cast<uint32_t>(length);
  plan->input_datatype = type;
  const size_t per_sequence = static_cast<size_t>(length) * config.d_model;
  plan->sequences.resize(plan->batch);
  for (uint32_t b = 0; b < plan->batch; ++b) {
    plan->sequences[b].data = std::span<const float>(data + b * per_sequence, per_sequence);
    plan->sequences[b].length = plan->length;
  }
  return grpc::Status::OK;
}

// Reads input `edges` ([E, 2], INT32 or INT64, every value in [0, L)) into
// flat pairs.
grpc::Status ReadEdges(const TensorData& d, uint32_t length, std::vector<uint32_t>* edges) {
  const Tensor& t = *d.tensor;
  const bool i32 = t.datatype() == "INT32";
  if (!i32 && t.datatype() != "INT64") {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': datatype '", Clip(t.datatype()),
                                "' is not supported; expected INT32 or INT64"));
  }
  if (t.shape_size() != 2 || t.shape(1) != 2) {
    return Invalid(absl::StrCat("input '", Clip(t.name()), "': shape ", ShapeString(t.shape()),
                                "; expected [E, 2] (one (query, key) pair per row)"));
  }
  uint64_t n = 0;
  if (grpc::Status s = Elements(t, true, &n); !s.ok()) return s;
  if (d.raw != nullptr) {
    if (grpc::Status s = CheckRawSize(t, *d.raw, n, i32 ? 4 : 8); !s.ok()) return s;
  } else if (i32 && static_cast<uint64_t>(t.contents().int_contents_size()) != n) {
    return CountMismatch(t, "int_contents", t.contents().int_contents_size(), n);
  } else if (!i32 && static_cast<uint64_t>(t.contents().int64_contents_size()) != n) {
    return CountMismatch(t, "int64_contents", t.contents().int64_contents_size(), n);
  }
  edges->resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    int64_t v = 0;
    if (d.raw != nullptr && i32) {
      int32_t x;
      std::memcpy(&x, d.raw->data() + 4 * i, 4);
      v = x;
    } else if (d.raw != nullptr) {
      std::memcpy(&v, d.raw->data() + 8 * i, 8);
    } else {
      v = i32 ? t.contents().int_contents(i) : t.contents().int64_contents(i);
    }
    if (v < 0 || v >= length) {
      return Invalid(absl::StrCat("input '", Clip(t.name()), "': value ", v, " at row ", i / 2,
                                  " is out of range; positions must be in [0, L) = [0, ", length,
                                  ")"));
    }
    (*edges)[i] = static_cast<uint32_t>(v);
  }
  return grpc::Status::OK;
}

// Which outputs, in reply order; settles the weights mode.
grpc::Status ChooseOutputs(const ModelInferRequest& request, const Params& params,
                           core::WeightsMode* weights, std::vector<OutputKind>* outputs) {
  *weights = params.weights.value_or(core::WeightsMode::kNone);
  if (request.outputs_size() == 0) {
    outputs->push_back(OutputKind::kOutput);
    if (*weights != core::WeightsMode::kNone) outputs->push_back(OutputKind::kAttention);
    return grpc::Status::OK;
  }
  bool attention = false;
  for (const auto& o : request.outputs()) {
    const OutputKind kind = o.name() == kOutputName ? OutputKind::kOutput : OutputKind::kAttention;
    if (o.name() != kOutputName && o.name() != kAttentionName) {
      return Invalid(absl::StrCat("unknown output '", Clip(o.name()), "'; this model has '",
                                  kOutputName,
                                  "' and '", kAttentionName, "'"));
    }
    for (OutputKind k : *outputs) {
      if (k == kind) return Invalid(absl::StrCat("output '", o.name(), "' requested twice"));
    }
    outputs->push_back(kind);
    attention = attention || kind == OutputKind::kAttention;
  }
  if (!attention) {
    *weights = core::WeightsMode::kNone;  // not asked for: not computed
  } else if (!params.weights.has_value()) {
    *weights = core::WeightsMode::kPerHead;
  } else if (*weights == core::WeightsMode::kNone) {
    return Invalid("output 'attention' requested with parameter 'weights' = 'none'; "
                   "use per_head or mean, or leave weights out (per_head)");
  }
  return grpc::Status::OK;
}

uint64_t AttentionFloats(const core::ModelConfig& config, core::WeightsMode weights,
                         uint64_t length) {
  const uint64_t mats = weights == core::WeightsMode::kPerHead ? config.num_heads
                        : weights == core::WeightsMode::kMean  ? 1
                                                               : 0;
  return mats * length * length;
}

}  // namespace

std::string ClipForMessage(const std::string& text) {
  constexpr size_t kShownBytes = 64;
  if (text.size() <= kShownBytes) return std::string(text);
  return absl::StrCat(text.substr(0, kShownBytes), "... (", text.size(), " bytes)");
}

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

float Fp16ToFloat(uint16_t bits) {
  const uint32_t sign = uint32_t{bits & 0x8000u} << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

grpc::Status PlanInfer(const ModelInferRequest& request, const std::string& model_name,
                       const core::ModelConfig& config, int64_t max_reply_bytes,
                       InferPlan* plan) {
  TensorData input, edges_data;
  if (grpc::Status s = FindInputs(request, &input, &edges_data); !s.ok()) return s;
  Params params;
  if (grpc::Status s = ParseParams(request, input.tensor, &params); !s.ok()) return s;
  core::WeightsMode weights;
  if (grpc::Status s = ChooseOutputs(request, params, &weights, &plan->outputs); !s.ok()) return s;
  if (grpc::Status s = ReadInput(input, config, plan); !s.ok()) return s;
  std::vector<uint32_t> edges;
  if (edges_data.tensor != nullptr) {
    if (grpc::Status s = ReadEdges(edges_data, plan->length, &edges); !s.ok()) return s;
  }
  // Each sequence gets its own copy of the edges: bound the total by what
  // one message may hold, so B x E cannot multiply memory.
  const uint64_t edge_bytes = uint64_t{plan->batch} * edges.size() * sizeof(uint32_t);
  if (plan->batch > 1 && edge_bytes > static_cast<uint64_t>(max_reply_bytes)) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("input 'edges' repeated for ", plan->batch,
                                     " sequences would take ", edge_bytes,
                                     " bytes, over the max message size of ", max_reply_bytes,
                                     "; send fewer sequences per request"));
  }
  const core::Pooling pooling = params.pooling.value_or(core::Pooling::kNone);
  uint64_t reply_floats = 0;
  for (core::SequenceInput& s : plan->sequences) {
    s.mask.causal = params.causal.value_or(false);
    s.mask.window = params.window.value_or(0);
    s.mask.edges = edges;
    s.weights = weights;
    s.pooling = pooling;
    reply_floats += uint64_t{core::OutputRowCount(s)} * config.d_model +
                    AttentionFloats(config, weights, s.length);
  }
  // Validated first, as attnserve.v1 does: a sequence the model cannot take
  // is its own error (OUT_OF_RANGE for L > max_length), whatever its reply size.
  for (uint32_t b = 0; b < plan->batch; ++b) {
    if (absl::Status s = core::ValidateSequence(config, plan->sequences[b]); !s.ok()) {
      const std::string where =
          plan->batched ? absl::StrCat("input 'input' sequence ", b, ": ") : "input 'input': ";
      return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                          absl::StrCat(where, s.message()));
    }
    plan->sequences[b].values_checked = true;
  }
  const uint64_t reply_bytes = 4 * reply_floats + 512 + request.id().size() + model_name.size();
  if (reply_bytes > static_cast<uint64_t>(max_reply_bytes)) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("the reply would be about ", reply_bytes, " bytes, over the server's ",
                     "max message size of ", max_reply_bytes,
                     " bytes; ask for weights 'mean' or no attention, or send fewer rows"));
  }
  return grpc::Status::OK;
}

std::string* LayOutResponse(const core::ModelConfig& config, InferPlan* plan,
                            inference::ModelInferResponse* response,
                            std::vector<float>* scratch) {
  const core::SequenceInput& first = plan->sequences.front();
  const uint64_t rows = core::OutputRowCount(first);
  const uint64_t per_output = rows * config.d_model;
  const uint64_t per_attention = AttentionFloats(config, first.weights, plan->length);
  std::string* output_raw = nullptr;
  std::string* attention_raw = nullptr;
  for (OutputKind kind : plan->outputs) {
    auto* tensor = response->add_outputs();
    tensor->set_datatype("FP32");
    if (plan->batched) tensor->add_shape(plan->batch);
    std::string* raw = response->add_raw_output_contents();
    if (kind == OutputKind::kOutput) {
      tensor->set_name(kOutputName);
      tensor->add_shape(static_cast<int64_t>(rows));
      tensor->add_shape(config.d_model);
      raw->resize(4 * per_output * plan->batch);
      output_raw = raw;
    } else {
      tensor->set_name(kAttentionName);
      if (first.weights == core::WeightsMode::kPerHead) tensor->add_shape(config.num_heads);
      tensor->add_shape(plan->length);
      tensor->add_shape(plan->length);
      raw->resize(4 * per_attention * plan->batch);
      attention_raw = raw;
    }
  }
  float* out = nullptr;
  if (output_raw != nullptr && reinterpret_cast<uintptr_t>(output_raw->data()) % alignof(float) == 0) {
    out = reinterpret_cast<float*>(output_raw->data());
  } else {  // not requested (or, never seen, misaligned): the caller copies it over
    scratch->resize(per_output * plan->batch);
    out = scratch->data();
  }
  for (uint32_t b = 0; b < plan->batch; ++b) {
    plan->sequences[b].output_buffer = std::span<float>(out + b * per_output, per_output);
  }
  return attention_raw;
}

void CopyAttention(const core::SequenceOutput& out, uint32_t index, uint32_t length,
                   std::string* attention) {
  const size_t matrix_bytes = sizeof(float) * length * length;
  char* dst = attention->data() + index * out.attention.size() * matrix_bytes;
  for (const core::WeightsMatrix& w : out.attention) {
    std::memcpy(dst, w.data(), std::min(matrix_bytes, sizeof(float) * w.size()));
    dst += matrix_bytes;
  }
}

void FillModelMetadata(const std::string& name, const std::string& version,
                       const core::ModelConfig& config,
                       inference::ModelMetadataResponse* response) {
  response->set_name(name);
  response->add_versions(version);
  response->set_platform("attnserve");
  auto add = [](auto* list, const char* tensor, const char* type,
                std::initializer_list<int64_t> shape) {
    auto* t = list->Add();
    t->set_name(tensor);
    t->set_datatype(type);
    for (int64_t d : shape) t->add_shape(d);
  };
  const int64_t d = config.d_model;
  const int64_t h = config.num_heads;
  add(response->mutable_inputs(), kInputName, "FP32", {-1, -1, d});
  add(response->mutable_inputs(), kEdgesName, "INT64", {-1, 2});
  add(response->mutable_outputs(), kOutputName, "FP32", {-1, -1, d});
  add(response->mutable_outputs(), kAttentionName, "FP32", {-1, h, -1, -1});
}

std::string ConfigJson(const core::ModelConfig& config) {
  nlohmann::json j = {
      {"d_model", config.d_model},
      {"num_heads", config.num_heads},
      {"max_length", config.max_length},
      {"positional", std::string(core::ToString(config.positional))},
      {"relevance", std::string(core::ToString(config.relevance))},
      {"normalization", std::string(core::ToString(config.normalization))},
      {"projections", config.projections},
      {"precision", std::string(core::ToString(config.precision))},
      {"scale", config.scale},
      {"input_datatypes", {"FP32", "BF16", "FP16"}},
      {"edges_datatypes", {"INT32", "INT64"}},
  };
  return j.dump();
}

}  // namespace attnserve::server::v2
