// End-to-end tests of engine failures and of several models at once, through
// the real service over 127.0.0.1 with engines injected through
// ServerOptions::engine_factory (tests/fake_engines.h): an engine that throws
// std::bad_alloc or returns a oneDNN-like error fails only its batch's
// requests, with RESOURCE_EXHAUSTED or INTERNAL and a message; the failure is
// logged and counted (attnserve_engine_failures_total); the next batch equals
// the reference. Several models computing at once never run two engine
// batches at the same time (one shared CPU budget).
#include <atomic>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/fake_engines.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

// Sequence lengths the injected engine fails on.
constexpr uint32_t kOutOfMemoryLength = 13;
constexpr uint32_t kOneDnnErrorLength = 17;
constexpr uint32_t kThrowLength = 19;

bool BatchHasLength(std::span<const core::SequenceInput> batch, uint32_t length) {
  for (const core::SequenceInput& s : batch) {
    if (s.length == length) return true;
  }
  return false;
}

// Captures spdlog's output for the life of the object.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() {
    spdlog::default_logger()->flush();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST(E2eEngineTest, EngineFailuresAreStatusesLoggedCountedAndTheServerKeepsServing) {
  auto state = std::make_shared<EngineHookState>();
  state->before_run = [](const std::string&, std::span<const core::SequenceInput> batch) {
    if (BatchHasLength(batch, kOutOfMemoryLength)) throw std::bad_alloc();
    if (BatchHasLength(batch, kThrowLength)) throw std::runtime_error("injected engine bug");
    if (BatchHasLength(batch, kOneDnnErrorLength)) {
      return absl::InternalError("attention engine: oneDNN error: injected");
    }
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  LogCapture log;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(7);

  struct Case {
    uint32_t length;
    grpc::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {kOutOfMemoryLength, grpc::StatusCode::RESOURCE_EXHAUSTED, "out of memory"},
      {kOneDnnErrorLength, grpc::StatusCode::INTERNAL, "oneDNN error: injected"},
      {kThrowLength, grpc::StatusCode::INTERNAL, "injected engine bug"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.length);
    v1::AttendResponse reply;
    const grpc::Status failed =
        CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, c.length), &reply);
    EXPECT_EQ(failed.error_code(), c.code) << failed.error_message();
    EXPECT_THAT(failed.error_message(), HasSubstr(c.message));
    // The next batch is unaffected: equal to the reference.
    const v1::AttendRequest good = RandomMixedRequest(rng, c.length, "mha_plain", 32, 40);
    const grpc::Status ok = CallAttend(*stub, good, &reply);
    ASSERT_TRUE(ok.ok()) << ok.error_message();
    EXPECT_TRUE(oracle.Matches("mha_plain", good, reply));
  }
  server::Metrics& metrics = server->metrics();
  EXPECT_EQ(CounterValue(metrics, "attnserve_engine_failures_total",
                         {{"model", "mha_plain"}, {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  EXPECT_EQ(CounterValue(metrics, "attnserve_engine_failures_total",
                         {{"model", "mha_plain"}, {"code", "INTERNAL"}}),
            2);
  EXPECT_EQ(CounterValue(metrics, "attnserve_requests_total",
                         {{"model", "mha_plain"}, {"code", "INTERNAL"}}),
            2);
  EXPECT_EQ(CounterValue(metrics, "attnserve_requests_total",
                         {{"model", "mha_plain"}, {"code", "OK"}}),
            3);
  const std::string logged = log.text();
  EXPECT_THAT(logged, HasSubstr("model mha_plain: engine failed 1 of 1 request(s)"));
  EXPECT_THAT(logged, HasSubstr("injected engine bug"));
}

TEST(E2eEngineTest, SeveralModelsAtOnceAreCorrectAndNeverComputeTwoBatchesAtATime) {
  auto state = std::make_shared<EngineHookState>();
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.batching.max_batch_size = 4;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  struct Model {
    const char* name;
    uint32_t d_model, max_length;
  };
  const Model models[] = {{"mha_learned_bf16", 16, 32},
                          {"mha_plain", 32, 96},
                          {"mha_sinusoidal_sep", 64, 64},
                          {"rotary_manual", 32, 64}};
  constexpr int kClientsPerModel = 4;
  constexpr int kCalls = 6;
  std::atomic<int> bad{0};
  std::vector<std::thread> clients;
  for (int m = 0; m < 4; ++m) {
    for (int c = 0; c < kClientsPerModel; ++c) {
      clients.emplace_back([&, m, c] {
        auto stub = v1::Attention::NewStub(LoopbackChannel(server->port(), c));
        std::mt19937 rng(100 * m + c);
        for (int k = 0; k < kCalls; ++k) {
          const Model& model = models[m];
          const v1::AttendRequest request =
              RandomMixedRequest(rng, k + c, model.name, model.d_model, model.max_length);
          v1::AttendResponse reply;
          const grpc::Status status = CallAttend(*stub, request, &reply);
          if (!status.ok() || !oracle.Matches(model.name, request, reply)) ++bad;
        }
      });
    }
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(state->runs.load(), 4);
  EXPECT_EQ(state->max_running.load(), 1) << "two engine batches computed at once";
}

// OMP_THREAD_LIMIT below --threads: the engine runs with the limit, and
// says so, instead of letting oneDNN plan for --threads while fewer run
// (which left part of every output uncomputed: wrong replies, no error).
TEST(E2eEngineTest, ThreadLimitBelowThreadsIsObeyedAndEveryReplyIsRight) {
  auto child = ChildProcess::Start({ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                    "--metrics-port", "0", "--model-repository",
                                    GoldenRepository(), "--threads", "2"},
                                   {"OMP_THREAD_LIMIT=1"});
  ASSERT_TRUE(child.ok()) << child.status();
  ChildProcess& server = **child;
  const int port = WaitForServingPort(server);
  ASSERT_GT(port, 0) << server.output();
  EXPECT_THAT(server.output(), HasSubstr("1 thread(s), capped by OMP_THREAD_LIMIT"));
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = v1::Attention::NewStub(LoopbackChannel(port));
  std::mt19937 rng(31);
  int bad = 0;
  for (int k = 0; k < 12; ++k) {
    const v1::AttendRequest request = RandomMixedRequest(rng, k, "mha_plain", 32, 96);
    v1::AttendResponse reply;
    const grpc::Status status = CallAttend(*stub, request, &reply);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok() || !oracle.Matches("mha_plain", request, reply)) ++bad;
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace
}  // namespace attnserve::testing
