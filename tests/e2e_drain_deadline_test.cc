// End-to-end tests of the drain deadline (AttnServer::Drain, main's exit
// code): with a batch stuck in the engine (injected through
// ServerOptions::engine_factory) Drain gives up at drain_timeout_ms (plus
// its 1 s cancel grace) and reports false, and the attnserve binary exits
// 1 at the deadline; a stream whose reply is still queued when draining
// begins gets it, and an idle open stream does not hold the drain (it is
// cancelled).
//
// Network only on 127.0.0.1; every RPC has a deadline, every wait a bound.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/fake_engines.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using SteadyClock = std::chrono::steady_clock;

// Generous: the machine is shared; these bound hangs, they do not time speed.
constexpr auto kMargin = std::chrono::seconds(3);
constexpr int64_t kDrainTimeoutMs = 500;
constexpr int64_t kCancelGraceMs = 1500;  // AttnServer::StopTransport's two graces

std::chrono::milliseconds Since(SteadyClock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start);
}

TEST(E2eDrainDeadlineTest, StuckBatchEndsTheDrainAtItsDeadlineWithFalse) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<bool> in_engine{false};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    in_engine = true;
    release.Wait(std::chrono::seconds(30));  // stuck until the test lets go
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.drain_timeout_ms = kDrainTimeoutMs;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(3);
  grpc::Status stuck_status;
  std::thread client([&] {
    v1::AttendResponse reply;
    stuck_status = CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, 8), &reply, 30000);
  });
  ASSERT_TRUE(WaitFor([&] { return in_engine.load(); }, std::chrono::seconds(10)));
  const auto start = SteadyClock::now();
  EXPECT_FALSE(server->Drain()) << "a stuck batch must make the drain report failure";
  const auto took = Since(start);
  EXPECT_GE(took.count(), kDrainTimeoutMs - 50);
  EXPECT_LE(took, std::chrono::milliseconds(kDrainTimeoutMs + kCancelGraceMs) + kMargin);
  release.Open();  // the batch ends; the destructor then joins everything
  client.join();
  EXPECT_FALSE(stuck_status.ok());  // cancelled at the deadline, never a fake success
  server.reset();
}

TEST(E2eDrainDeadlineTest, QueuedStreamReplyIsDeliveredAndAnIdleStreamDoesNotHoldTheDrain) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_batch_size = 64;
  options.batching.max_queue_delay_us = 5'000'000;  // waits in the queue until the drain
  options.drain_timeout_ms = 2000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(5);

  // Stream A: one message, queued when the drain starts; then half-closed.
  grpc::ClientContext queued_context;
  queued_context.set_deadline(DeadlineIn(30000));
  auto queued_stream = stub->AttendStream(&queued_context);
  const v1::AttendRequest queued = RandomRequest(rng, "mha_plain", 32, 12);
  ASSERT_TRUE(queued_stream->Write(queued));
  // Stream B: idle and open (nothing sent, never half-closed).
  grpc::ClientContext idle_context;
  idle_context.set_deadline(DeadlineIn(30000));
  auto idle_stream = stub->AttendStream(&idle_context);
  const server::Batcher& batcher = *server->registry().Find("mha_plain")->batcher;
  ASSERT_TRUE(WaitFor([&] { return batcher.queue_depth() == 1; }, std::chrono::seconds(10)));

  const auto start = SteadyClock::now();
  bool drained = false;
  std::thread drainer([&] { drained = server->Drain(); });
  v1::AttendResponse reply;
  ASSERT_TRUE(queued_stream->Read(&reply)) << "the queued reply was not delivered";
  EXPECT_TRUE(oracle.Matches("mha_plain", queued, reply));
  queued_stream->WritesDone();
  const grpc::Status queued_end = queued_stream->Finish();
  EXPECT_TRUE(queued_end.ok()) << queued_end.error_message();
  drainer.join();
  const auto took = Since(start);
  EXPECT_TRUE(drained) << "everything accepted was answered";
  EXPECT_LE(took, std::chrono::milliseconds(options.drain_timeout_ms + kCancelGraceMs) + kMargin);
  // The idle stream was cancelled, not left hanging.
  const grpc::Status idle_end = idle_stream->Finish();
  EXPECT_FALSE(idle_end.ok());
}

// The attnserve binary with one long batch computing (a real one: L = 32768
// on one thread takes seconds) when SIGTERM comes: it exits 1 right at the
// drain deadline instead of waiting for the batch.
TEST(E2eDrainDeadlineTest, BinaryExitsOneAtTheDeadlineWhileABatchIsStillComputing) {
  auto child = ChildProcess::Start({ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                    "--metrics-port", "0", "--model-repository",
                                    GoldenRepository(), "--threads", "1", "--log-level", "debug",
                                    "--drain-timeout-ms", "200"});
  ASSERT_TRUE(child.ok()) << child.status();
  ChildProcess& server = **child;
  const int port = WaitForServingPort(server);
  ASSERT_GT(port, 0) << server.output();

  auto stub = v1::Attention::NewStub(LoopbackChannel(port));
  std::mt19937 rng(9);
  const v1::AttendRequest big = RandomRequest(rng, "mha_plain", 32, 32768);
  std::thread client([&] {
    v1::AttendResponse reply;
    CallAttend(*stub, big, &reply, 60000);  // never answered: the server exits first
  });
  // The batch is in the engine (debug log) before the signal.
  const bool computing =
      server.WaitForLine("computing a batch of 1 request(s), 32768 tokens", std::chrono::seconds(30))
          .has_value();
  if (!computing) {
    server.Signal(SIGKILL);
    client.join();
    FAIL() << "the long batch never started; output:\n" << server.output();
  }
  const auto start = SteadyClock::now();
  server.Signal(SIGTERM);
  const std::optional<int> status = server.WaitExit(std::chrono::seconds(20));
  const auto took = Since(start);
  client.join();
  ASSERT_TRUE(status.has_value()) << server.output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 1)
      << "wait status " << *status << "; output:\n" << server.output();
  EXPECT_LE(took, std::chrono::milliseconds(200 + kCancelGraceMs) + kMargin);
  EXPECT_THAT(server.output(), HasSubstr("drain missed its 200 ms deadline; exiting 1"));
}

}  // namespace
}  // namespace attnserve::testing
