// SerializeReply (server/reply.h): the bytes it builds around the engine's
// buffers are exactly protobuf's serialization of the same AttendResponse,
// for every shape a reply takes, and parse back to the same values.
#include "server/reply.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using server::ReplyFloats;

ReplyFloats Floats(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> u(-2, 2);
  ReplyFloats v(n);
  for (float& x : v) x = u(rng);
  return v;
}

struct Shape {
  uint32_t rows, cols, length, matrices;
  bool stats;
  std::string id, model;
};

class SerializeReplyTest : public ::testing::TestWithParam<Shape> {};

TEST_P(SerializeReplyTest, BytesAreProtobufsAndParseBack) {
  const Shape& s = GetParam();
  std::mt19937 rng(s.rows * 131 + s.length * 7 + s.matrices);
  v1::AttendResponse head;
  head.set_request_id(s.id);
  head.set_model(s.model);
  if (s.stats) {
    head.mutable_stats()->set_queue_us(123456789012ull);
    head.mutable_stats()->set_compute_us(77);
    head.mutable_stats()->set_batch_size(3);
    head.mutable_stats()->set_batch_tokens(300);
  }
  ReplyFloats output = Floats(rng, size_t{s.rows} * s.cols);
  std::vector<core::WeightsMatrix> attention;
  for (uint32_t m = 0; m < s.matrices; ++m) {
    attention.push_back(Floats(rng, size_t{s.length} * s.length));
  }
  // What protobuf writes for the same message, copies and all.
  v1::AttendResponse whole = head;
  whole.mutable_output()->set_rows(s.rows);
  whole.mutable_output()->set_cols(s.cols);
  whole.mutable_output()->mutable_data()->Add(output.begin(), output.end());
  for (const auto& w : attention) {
    v1::Matrix* m = whole.add_attention();
    m->set_rows(s.length);
    m->set_cols(s.length);
    m->mutable_data()->Add(w.begin(), w.end());
  }
  std::string want;
  ASSERT_TRUE(whole.SerializeToString(&want));

  grpc::ByteBuffer bytes;
  ASSERT_TRUE(server::SerializeReply(head, s.rows, s.cols, std::move(output),
                                     std::move(attention), s.length, &bytes)
                  .ok());
  const std::string got = FromByteBuffer(bytes);
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "the bytes differ from protobuf's serialization";
  v1::AttendResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(got));
  EXPECT_EQ(parsed.SerializeAsString(), want);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SerializeReplyTest,
    ::testing::Values(Shape{128, 256, 128, 0, true, "a1b2c3d4-7", "demo"},   // weights none
                      Shape{1, 256, 40, 0, true, "id", "demo"},             // pooled
                      Shape{40, 32, 40, 1, true, "x", "m"},                 // weights mean
                      Shape{17, 32, 17, 4, true, "x", "m"},                 // per head
                      Shape{1, 1, 1, 2, false, "", ""},                     // smallest, no stats
                      Shape{300, 64, 300, 1, true, std::string(200, 'r'), "model-with-a-long-name"},
                      // a 4 MiB matrix: length prefixes of four bytes
                      Shape{1024, 32, 1024, 1, true, "big", "m"}));

// A field of AttendResponse the encoder does not know by name (one added to
// the proto later, here an unknown field) is carried, in number order.
TEST(SerializeReplyTest, FieldsItDoesNotNameAreKept) {
  v1::AttendResponse head;
  head.set_request_id("r");
  head.mutable_stats()->set_batch_size(2);
  head.GetReflection()->MutableUnknownFields(&head)->AddVarint(15, 12345);
  ReplyFloats output(6, 1.5f);
  v1::AttendResponse whole = head;
  whole.mutable_output()->set_rows(2);
  whole.mutable_output()->set_cols(3);
  whole.mutable_output()->mutable_data()->Add(output.begin(), output.end());
  grpc::ByteBuffer bytes;
  ASSERT_TRUE(server::SerializeReply(head, 2, 3, std::move(output), {}, 2, &bytes).ok());
  EXPECT_EQ(FromByteBuffer(bytes), whole.SerializeAsString());
}

TEST(SerializeReplyTest, ASizeThatDisagreesIsAnError) {
  v1::AttendResponse head;
  grpc::ByteBuffer bytes;
  EXPECT_EQ(server::SerializeReply(head, 2, 3, ReplyFloats(5), {}, 2, &bytes).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  std::vector<core::WeightsMatrix> wrong(1, core::WeightsMatrix(3));
  EXPECT_EQ(server::SerializeReply(head, 2, 3, ReplyFloats(6), std::move(wrong), 2, &bytes)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  head.mutable_output()->set_rows(1);
  EXPECT_EQ(server::SerializeReply(head, 2, 3, ReplyFloats(6), {}, 2, &bytes).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace attnserve::testing
