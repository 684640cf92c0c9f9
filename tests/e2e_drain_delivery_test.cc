// End-to-end tests of delivery during the drain (issue 11, review finding
// 6): a reply counts as answered when gRPC has delivered it, not when it was
// handed to gRPC. An in-process AttnServer on tests/golden/data, a client
// stream over 127.0.0.1 that sends WEIGHTS_PER_HEAD messages and does not
// read, so the replies wait on HTTP/2 flow control when SIGTERM's drain
// begins:
// - the reader resumes well after the old 500 ms grace but before the drain
//   deadline: it gets every reply, correct, and the drain reports success;
// - the reader never resumes: the drain still ends at its deadline (plus the
//   transport's cancel grace) and reports failure (main() exits 1).
// Network only on 127.0.0.1; every RPC has a deadline, every wait a bound.
#include <atomic>
#include <chrono>
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

using SteadyClock = std::chrono::steady_clock;

constexpr int kMessages = 8;  // the default --stream-window: all read at once
// mha_plain: 4 heads; L = 1024 per-head weights are 16 MiB a reply, 128 MiB in
// all, far beyond what HTTP/2 flow control lets through to a reader that
// does not read.
constexpr uint32_t kLength = 1024;
constexpr auto kMargin = std::chrono::seconds(3);  // bounds hangs; times nothing
constexpr int64_t kCancelGraceMs = 1500;          // AttnServer::StopTransport's two graces

std::vector<v1::AttendRequest> PerHeadRequests(std::mt19937& rng) {
  std::vector<v1::AttendRequest> requests;
  for (int i = 0; i < kMessages; ++i) {
    requests.push_back(RandomRequest(rng, "mha_plain", 32, kLength));
    requests.back().set_weights(v1::WEIGHTS_PER_HEAD);
    requests.back().set_request_id(absl::StrCat("m", i));
  }
  return requests;
}

// Requests of mha_plain answered OK so far (handed to gRPC, maybe unsent).
double AnsweredOk(server::AttnServer& server) {
  return CounterValue(server.metrics(), "attnserve_requests_total",
                      {{"model", "mha_plain"}, {"code", "OK"}});
}

// Writes every request and half-closes without reading; returns once the
// server has answered them all.
void SendAllAndWaitAnswered(server::AttnServer& server,
                            grpc::ClientReaderWriter<v1::AttendRequest, v1::AttendResponse>& stream,
                            const std::vector<v1::AttendRequest>& requests) {
  for (const v1::AttendRequest& r : requests) ASSERT_TRUE(stream.Write(r));
  ASSERT_TRUE(stream.WritesDone());
  ASSERT_TRUE(WaitFor([&] { return AnsweredOk(server) >= kMessages; }, std::chrono::seconds(60)))
      << AnsweredOk(server) << " answered";
}

// Options whose stream bounds read all kMessages at once (the byte window
// would otherwise stop at four of these replies).
server::ServerOptions WideWindowOptions() {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.stream_window = kMessages;
  options.stream_window_bytes = int64_t{1} << 30;
  return options;
}

TEST(E2eDrainDeliveryTest, SlowReaderGetsEveryReplyWhenItResumesBeforeTheDeadline) {
  server::ServerOptions options = WideWindowOptions();
  options.drain_timeout_ms = 30000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(17);
  const std::vector<v1::AttendRequest> requests = PerHeadRequests(rng);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(60000));
  auto stream = stub->AttendStream(&context);
  SendAllAndWaitAnswered(*server, *stream, requests);

  std::atomic<bool> drained{false};
  std::atomic<bool> drain_returned{false};
  std::thread drainer([&] {
    drained = server->Drain();
    drain_returned = true;
  });
  // Longer than the drain took before delivery was counted (200 ms of
  // refusals, then 500 ms of grace before Shutdown cancelled the stream).
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_FALSE(drain_returned.load()) << "the drain did not wait for the unread replies";
  std::vector<v1::AttendResponse> replies;
  v1::AttendResponse reply;
  while (stream->Read(&reply)) replies.push_back(reply);
  const grpc::Status status = stream->Finish();
  drainer.join();
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  ASSERT_EQ(replies.size(), static_cast<size_t>(kMessages));
  std::set<std::string> ids;
  for (const v1::AttendResponse& r : replies) {
    ids.insert(r.request_id());
    EXPECT_EQ(r.attention_size(), 4);
    EXPECT_EQ(r.output().rows(), kLength);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kMessages));
  // The numbers of the first and the last reply (the reference engine is
  // slow at L = 1024; the others went the same way).
  for (const v1::AttendResponse* r : {&replies.front(), &replies.back()}) {
    const int index = std::stoi(r->request_id().substr(1));
    ASSERT_GE(index, 0);
    ASSERT_LT(index, kMessages);
    EXPECT_TRUE(oracle.Matches("mha_plain", requests[index], *r)) << r->request_id();
  }
  EXPECT_TRUE(drained.load()) << "everything accepted was answered and delivered";
}

TEST(E2eDrainDeliveryTest, ReaderThatNeverReadsDoesNotHoldTheDrainPastItsDeadline) {
  server::ServerOptions options = WideWindowOptions();
  options.drain_timeout_ms = 1000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(19);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(60000));
  auto stream = stub->AttendStream(&context);
  SendAllAndWaitAnswered(*server, *stream, PerHeadRequests(rng));

  const auto start = SteadyClock::now();
  EXPECT_FALSE(server->Drain()) << "undelivered replies at the deadline are a failed drain";
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start);
  EXPECT_GE(took.count(), options.drain_timeout_ms - 50);
  EXPECT_LE(took, std::chrono::milliseconds(options.drain_timeout_ms + kCancelGraceMs) + kMargin);
  // The stream was cancelled at the deadline: whatever the client reads now,
  // it does not end OK.
  v1::AttendResponse reply;
  int read = 0;
  while (stream->Read(&reply)) ++read;
  EXPECT_FALSE(stream->Finish().ok()) << read << " replies read";
  EXPECT_LT(read, kMessages);
}

}  // namespace
}  // namespace attnserve::testing
