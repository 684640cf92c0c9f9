// End-to-end tests of Attention.AttendStream over 127.0.0.1 against an
// in-process AttnServer on tests/golden/data: every message is answered
// exactly once, correctly, in completion order; a bad message ends the
// stream with its status after everything accepted before it was answered.
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

struct StreamResult {
  grpc::Status status;
  std::vector<v1::AttendResponse> replies;
  int written = 0;  // messages the client managed to write
};

// Writes `requests` from a second thread while reading every reply, then
// finishes the stream. Bounded by a 30 s deadline.
StreamResult RunStream(v1::Attention::Stub& stub, const std::vector<v1::AttendRequest>& requests) {
  StreamResult result;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(30000));
  auto stream = stub.AttendStream(&context);
  std::thread writer([&] {
    for (const v1::AttendRequest& request : requests) {
      if (!stream->Write(request)) break;  // the server ended the stream
      ++result.written;
    }
    stream->WritesDone();
  });
  v1::AttendResponse reply;
  while (stream->Read(&reply)) result.replies.push_back(reply);
  writer.join();
  result.status = stream->Finish();
  return result;
}

// Models of the stream's messages: name, d_model, longest L to send.
struct StreamModel {
  std::string name;
  uint32_t d_model;
  uint32_t max_length;
};

TEST(E2eStreamTest, TwoHundredMessagesAreEachAnsweredExactlyOnceAndCorrectly) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_delay_us = 10000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  const std::vector<StreamModel> models = {
      {"mha_plain", 32, 64}, {"mha_sinusoidal_sep", 64, 64}, {"rotary_manual", 32, 64}};
  std::mt19937 rng(4242);
  std::vector<v1::AttendRequest> requests;
  std::map<std::string, const v1::AttendRequest*> sent;
  for (int i = 0; i < 200; ++i) {
    const StreamModel& m = models[i % models.size()];
    requests.push_back(RandomMixedRequest(rng, i, m.name, m.d_model, m.max_length));
    requests.back().set_request_id(absl::StrCat("m", i));
  }
  for (const v1::AttendRequest& r : requests) sent[r.request_id()] = &r;

  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  const StreamResult result = RunStream(*stub, requests);
  ASSERT_TRUE(result.status.ok()) << result.status.error_code() << " "
                                  << result.status.error_message();
  EXPECT_EQ(result.written, 200);
  ASSERT_EQ(result.replies.size(), 200u);
  std::set<std::string> answered;
  int batched = 0;
  for (const v1::AttendResponse& reply : result.replies) {
    ASSERT_TRUE(sent.count(reply.request_id())) << "unknown id " << reply.request_id();
    EXPECT_TRUE(answered.insert(reply.request_id()).second) << "twice: " << reply.request_id();
    const v1::AttendRequest& request = *sent[reply.request_id()];
    EXPECT_EQ(reply.model(), request.model());
    EXPECT_TRUE(oracle.Matches(request.model(), request, reply));
    EXPECT_GE(reply.stats().batch_tokens(), request.input().rows());
    if (reply.stats().batch_size() > 1) ++batched;
  }
  EXPECT_EQ(answered.size(), sent.size());
  // Messages of one stream are batched together too.
  EXPECT_GT(batched, 0);
}

TEST(E2eStreamTest, EmptyRequestIdsGetUniqueGeneratedOnes) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  std::mt19937 rng(9);
  std::vector<v1::AttendRequest> requests;
  for (int i = 0; i < 20; ++i) requests.push_back(RandomRequest(rng, "mha_plain", 32, 1 + i));
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  const StreamResult result = RunStream(*stub, requests);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  std::set<std::string> ids;
  for (const v1::AttendResponse& reply : result.replies) {
    EXPECT_FALSE(reply.request_id().empty());
    ids.insert(reply.request_id());
  }
  EXPECT_EQ(ids.size(), 20u);
}

TEST(E2eStreamTest, BadMessageEndsTheStreamWithItsStatusAfterEarlierOnesAreAnswered) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  // The earlier messages are still queued when the bad one arrives: the
  // stream must wait for them before it ends.
  options.batching.max_queue_delay_us = 200000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  std::mt19937 rng(11);
  std::vector<v1::AttendRequest> requests;
  for (int i = 0; i < 20; ++i) {
    requests.push_back(RandomMixedRequest(rng, i, "mha_plain", 32, 32));
    requests.back().set_request_id(absl::StrCat("m", i));
  }
  requests[10].mutable_input()->set_cols(16);  // shape mismatch
  std::map<std::string, const v1::AttendRequest*> sent;
  for (const v1::AttendRequest& r : requests) sent[r.request_id()] = &r;

  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  const StreamResult result = RunStream(*stub, requests);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << result.status.error_message();
  EXPECT_THAT(result.status.error_message(), HasSubstr("m10"));
  EXPECT_THAT(result.status.error_message(), HasSubstr("d_model"));
  std::set<std::string> answered;
  for (const v1::AttendResponse& reply : result.replies) {
    ASSERT_TRUE(sent.count(reply.request_id())) << "unknown id " << reply.request_id();
    EXPECT_TRUE(answered.insert(reply.request_id()).second) << "twice: " << reply.request_id();
    EXPECT_TRUE(oracle.Matches("mha_plain", *sent[reply.request_id()], reply));
  }
  // Exactly the messages before the bad one: nothing after it is read.
  std::set<std::string> before;
  for (int i = 0; i < 10; ++i) before.insert(absl::StrCat("m", i));
  EXPECT_EQ(answered, before);
}

}  // namespace
}  // namespace attnserve::testing
