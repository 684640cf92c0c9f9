#include "server/validation.h"

#include <string>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

bool ParseFromByteBuffer(const grpc::ByteBuffer& bytes, google::protobuf::Message* message) {
  grpc::ByteBuffer view(bytes);  // shares the slices; the reader needs a mutable buffer
  grpc::ProtoBufferReader reader(&view);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

uint64_t EstimateReplyBytes(const v1::AttendRequest& request, const core::ModelConfig& config) {
  const uint64_t L = request.input().rows();
  const uint64_t rows = request.pooling() == v1::POOLING_NONE ? L : 1;
  uint64_t floats = rows * config.d_model;
  if (request.weights() == v1::WEIGHTS_PER_HEAD) floats += config.num_heads * L * L;
  if (request.weights() == v1::WEIGHTS_MEAN) floats += L * L;
  // Packed repeated floats cost 4 bytes each; a few hundred bytes of framing,
  // ids and stats on top.
  return 4 * floats + 512 + request.request_id().size() + request.model().size();
}

grpc::Status ValidateInputMatrix(const v1::Matrix& input, const std::string& model_name,
                                 const core::ModelConfig& config) {
  if (input.cols() != config.d_model) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("input.cols is ", input.cols(), "; model '", model_name,
                                     "' expects d_model = ", config.d_model, " columns"));
  }
  if (input.rows() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "input is empty: input.rows must be >= 1 (the sequence length)");
  }
  const uint64_t expected = uint64_t{input.rows()} * input.cols();
  if (static_cast<uint64_t>(input.data_size()) != expected) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("input.data has ", input.data_size(),
                                     " values; expected rows * cols = ", input.rows(), " * ",
                                     input.cols(), " = ", expected));
  }
  return grpc::Status::OK;
}

grpc::Status ValidateRequest(const v1::AttendRequest& request, const std::string& model_name,
                             const core::ModelConfig& config, int64_t max_reply_bytes,
                             core::SequenceInput* sequence) {
  const v1::Matrix& input = request.input();
  if (grpc::Status s = ValidateInputMatrix(input, model_name, config); !s.ok()) return s;
  if (request.weights() < v1::WEIGHTS_NONE || request.weights() > v1::WEIGHTS_MEAN ||
      request.pooling() < v1::POOLING_NONE || request.pooling() > v1::POOLING_FIRST) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "unknown weights or pooling enum value; see attention.proto");
  }
  sequence->data = std::span<const float>(input.data().data(), input.data_size());
  sequence->length = input.rows();
  sequence->mask.causal = request.mask().causal();
  sequence->mask.window = request.mask().window();
  sequence->mask.edges.assign(request.mask().edges().begin(), request.mask().edges().end());
  sequence->weights = static_cast<core::WeightsMode>(request.weights());
  sequence->pooling = static_cast<core::Pooling>(request.pooling());
  if (absl::Status s = core::ValidateSequence(config, *sequence); !s.ok()) {
    return ToGrpcStatus(s);
  }
  sequence->values_checked = true;  // the engine need not scan the values again
  const uint64_t reply_bytes = EstimateReplyBytes(request, config);
  if (reply_bytes > static_cast<uint64_t>(max_reply_bytes)) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("the reply would be about ", reply_bytes, " bytes, over the server's ",
                     "max message size of ", max_reply_bytes,
                     " bytes; ask for WEIGHTS_MEAN or WEIGHTS_NONE, or send fewer rows"));
  }
  return grpc::Status::OK;
}

}  // namespace attnserve::server
