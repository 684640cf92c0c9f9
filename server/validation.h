// Parsing raw call bytes, and request validation: turns an AttendRequest into a core::SequenceInput that
// views the request's own data (no copy), or the gRPC error of docs/DESIGN.md's
// table with a message saying what was wrong and what was expected. Pure
// functions; thread-safe.
#ifndef ATTNSERVE_SERVER_VALIDATION_H_
#define ATTNSERVE_SERVER_VALIDATION_H_

#include <cstdint>

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "attnserve/v1/attention.pb.h"
#include "core/engine.h"

namespace attnserve::server {

// Parses raw call bytes into *message (its fields cleared first); false when
// they are not valid protobuf wire data for it. Unknown field numbers are
// skipped, as protobuf does. The caller words the error for its message type.
bool ParseFromByteBuffer(const grpc::ByteBuffer& bytes, google::protobuf::Message* message);

// The same code, as gRPC's enum (absl and gRPC share the numbering).
grpc::Status ToGrpcStatus(const absl::Status& status);

// Bytes of the reply `request` would get from a model of this shape: the
// output plus the attention weights it asks for, plus framing.
uint64_t EstimateReplyBytes(const v1::AttendRequest& request, const core::ModelConfig& config);

// Checks an input matrix's shape against the model: cols == d_model, rows
// >= 1, data size == rows * cols (INVALID_ARGUMENT saying which). For
// Attend's input and a session's chunk alike.
grpc::Status ValidateInputMatrix(const v1::Matrix& input, const std::string& model_name,
                                 const core::ModelConfig& config);

// Checks `request` against the model and fills *sequence, whose data points
// into `request` (which must outlive it). Errors: INVALID_ARGUMENT (cols !=
// d_model, empty input, data size != rows * cols, non-finite value, bad
// mask), OUT_OF_RANGE (L > max_length with a positional encoding),
// RESOURCE_EXHAUSTED (reply larger than max_reply_bytes). On success the
// sequence is marked values_checked, so the engine does not scan it again.
grpc::Status ValidateRequest(const v1::AttendRequest& request, const std::string& model_name,
                             const core::ModelConfig& config, int64_t max_reply_bytes,
                             core::SequenceInput* sequence);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_VALIDATION_H_
