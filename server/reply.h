// The bytes of an AttendResponse built around the engine's buffers instead of
// copies of them. The output rows (L x d_model floats) and the attention
// weights (L x L floats a matrix) are the bulk of a reply: protobuf would copy
// each twice (into the message's repeated fields, then into the serialized
// bytes). SerializeReply copies neither: the vectors the engine wrote move
// into the ByteBuffer's slices, which gRPC sends from and frees once sent.
// The bytes are the same as protobuf's serialization of the whole message
// (fields in number order, packed floats), so every client reads them as
// before. SerializeReply is thread-safe (it shares nothing).
#ifndef ATTNSERVE_SERVER_REPLY_H_
#define ATTNSERVE_SERVER_REPLY_H_

#include <cstdint>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include "attnserve/v1/attention.pb.h"
#include "core/engine.h"

namespace attnserve::server {

// Floats a reply owns; sized without being zeroed (the engine writes them).
using ReplyFloats = core::WeightsMatrix;

// `head` holds the reply's small fields (request_id, model, stats, and any
// other but output and attention, which must be unset); `output` is the output matrix, rows x cols;
// `attention` the attention matrices, each length x length. Replaces *bytes.
// INVALID_ARGUMENT when a size disagrees (a bug, not a client's doing).
// Throws std::bad_alloc when a header cannot be allocated; the floats are
// then freed with the vectors.
grpc::Status SerializeReply(const v1::AttendResponse& head, uint32_t rows, uint32_t cols,
                            ReplyFloats output, std::vector<core::WeightsMatrix> attention,
                            uint32_t length, grpc::ByteBuffer* bytes);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_REPLY_H_
