#include "server/reply.h"

#include <bit>
#include <memory>
#include <string>
#include <utility>

#include <grpcpp/support/slice.h>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

static_assert(std::endian::native == std::endian::little,
              "packed floats go on the wire as they are in memory: little-endian only");

constexpr int kLengthDelimited = 2;

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendTag(int field, int wire_type, std::string* out) {
  AppendVarint(static_cast<uint64_t>(field) << 3 | wire_type, out);
}

// Appends the bytes of field `field` (a Matrix of rows x cols holding
// `floats` floats) up to its data, as protobuf writes them: tag, length, rows
// and cols (omitted when zero, as proto3 does), the packed data's tag and
// length (omitted when empty).
void AppendMatrixHeader(int field, uint32_t rows, uint32_t cols, uint64_t floats,
                        std::string* out) {
  std::string body;
  if (rows != 0) {
    AppendTag(v1::Matrix::kRowsFieldNumber, 0, &body);
    AppendVarint(rows, &body);
  }
  if (cols != 0) {
    AppendTag(v1::Matrix::kColsFieldNumber, 0, &body);
    AppendVarint(cols, &body);
  }
  const uint64_t data_bytes = floats * sizeof(float);
  if (data_bytes != 0) {
    AppendTag(v1::Matrix::kDataFieldNumber, kLengthDelimited, &body);
    AppendVarint(data_bytes, &body);
  }
  AppendTag(field, kLengthDelimited, out);
  AppendVarint(body.size() + data_bytes, out);
  out->append(body);
}

// Moves `floats` into a slice that frees them when gRPC is done with it.
grpc::Slice OwningSlice(core::WeightsMatrix floats) {
  auto owner = std::make_unique<core::WeightsMatrix>(std::move(floats));
  const size_t bytes = owner->size() * sizeof(float);
  void* data = owner->data();
  grpc::Slice slice(data, bytes, [](void* p) { delete static_cast<core::WeightsMatrix*>(p); },
                    owner.get());
  owner.release();  // the slice owns it now
  return slice;
}

}  // namespace

grpc::Status SerializeReply(const v1::AttendResponse& head, uint32_t rows, uint32_t cols,
                            ReplyFloats output, std::vector<core::WeightsMatrix> attention,
                            uint32_t length, grpc::ByteBuffer* bytes) {
  if (head.has_output() || head.attention_size() != 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "reply head must leave output and attention unset");
  }
  if (output.size() != uint64_t{rows} * cols) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("reply output holds ", output.size(), " floats, not ", rows,
                                     " x ", cols));
  }
  for (const core::WeightsMatrix& w : attention) {
    if (w.size() != uint64_t{length} * length) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("attention matrix holds ", w.size(), " floats, not ",
                                       length, " x ", length));
    }
  }
  // Fields in number order: request_id and model (1, 2), output (3),
  // attention (4), stats (5).
  // Fields 1 and 2 before the matrices, every other one of `head` (stats,
  // fields added later, unknown fields) after them.
  v1::AttendResponse first, last = head;
  first.set_request_id(head.request_id());
  first.set_model(head.model());
  last.clear_request_id();
  last.clear_model();

  std::vector<grpc::Slice> slices;
  slices.reserve(3 + 2 * attention.size());
  std::string text = first.SerializeAsString();
  AppendMatrixHeader(v1::AttendResponse::kOutputFieldNumber, rows, cols, output.size(), &text);
  slices.emplace_back(text);
  if (!output.empty()) slices.push_back(OwningSlice(std::move(output)));
  for (core::WeightsMatrix& w : attention) {
    std::string header;
    AppendMatrixHeader(v1::AttendResponse::kAttentionFieldNumber, length, length, w.size(),
                       &header);
    slices.emplace_back(header);
    if (!w.empty()) slices.push_back(OwningSlice(std::move(w)));
  }
  std::string tail = last.SerializeAsString();
  if (!tail.empty()) slices.emplace_back(tail);
  grpc::ByteBuffer built(slices.data(), slices.size());
  bytes->Swap(&built);
  return grpc::Status::OK;
}

}  // namespace attnserve::server
