// End-to-end tests of health, graceful drain and the attnserve binary:
// grpc.health.v1 overall and per model; AttnServer::Drain answers what was
// accepted (held in an injected engine while the test looks), refuses new
// calls with UNAVAILABLE and reports NOT_SERVING first;
// the real binary drains on SIGTERM under load and exits 0; its flags,
// --help, environment variables and startup errors.
//
// Network only on 127.0.0.1; every RPC has a deadline, every wait a bound;
// a child process still running at the end of a test is SIGKILLed.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/fake_engines.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr int kServing = 1;     // grpc.health.v1.HealthCheckResponse.SERVING
constexpr int kNotServing = 2;  // NOT_SERVING
const char* const kModels[] = {"mha_learned_bf16", "mha_plain", "mha_sinusoidal_sep",
                               "rotary_manual"};

TEST(E2eHealthTest, ServingOverallAndPerModelNotFoundForUnknownServices) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto channel = LoopbackChannel(server->port());
  int serving = 0;
  grpc::Status status = HealthCheck(channel, "", &serving);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(serving, kServing);
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    serving = 0;
    status = HealthCheck(channel, model, &serving);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(serving, kServing);
  }
  status = HealthCheck(channel, "no_such_model", &serving);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
}

TEST(E2eDrainTest, AnswersAcceptedRequestsRefusesNewOnesAndTurnsNotServingFirst) {
  // The accepted request is held in the engine (injected) until the test has
  // checked the drain's first phases, so nothing below depends on timing.
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<bool> in_engine{false};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    in_engine = true;
    release.Wait(std::chrono::seconds(30));
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.drain_timeout_ms = 30000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto channel = LoopbackChannel(server->port());
  auto stub = v1::Attention::NewStub(channel);
  std::mt19937 rng(31);
  const v1::AttendRequest queued = RandomRequest(rng, "mha_plain", 32, 6);
  grpc::Status queued_status;
  v1::AttendResponse queued_reply;
  std::thread client([&] { queued_status = CallAttend(*stub, queued, &queued_reply); });
  ASSERT_TRUE(WaitFor([&] { return in_engine.load(); }, std::chrono::seconds(10)));

  std::atomic<bool> drain_done{false};
  bool drain_result = false;
  std::thread drainer([&] {
    drain_result = server->Drain();
    drain_done = true;
  });
  // Health turns NOT_SERVING while the accepted request is still computing.
  int serving = kServing;
  EXPECT_TRUE(WaitFor(
      [&] { return HealthCheck(channel, "", &serving).ok() && serving == kNotServing; },
      std::chrono::seconds(5)));
  EXPECT_TRUE(HealthCheck(channel, "mha_plain", &serving).ok());
  EXPECT_EQ(serving, kNotServing);
  EXPECT_FALSE(drain_done.load()) << "drain finished before the accepted request was answered";

  // A new call while draining is refused.
  v1::AttendResponse reply;
  const grpc::Status refused = CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, 3), &reply);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("draining"));
  EXPECT_FALSE(drain_done.load());

  release.Open();
  client.join();
  drainer.join();
  ASSERT_TRUE(queued_status.ok()) << queued_status.error_message();
  EXPECT_TRUE(oracle.Matches("mha_plain", queued, queued_reply));
  EXPECT_TRUE(drain_result);
  // After the drain the transport is gone: UNAVAILABLE too.
  const grpc::Status after = CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, 3), &reply, 5000);
  EXPECT_EQ(after.error_code(), grpc::StatusCode::UNAVAILABLE) << after.error_message();
}

// ---- The attnserve binary. ----

// The binary with `args` after loopback defaults (127.0.0.1, any free port,
// metrics off, tests/golden/data); a default is left out when `args` or
// `env` sets it.
std::vector<std::string> BinaryArgs(const std::vector<std::string>& args,
                                    const std::vector<std::string>& env = {}) {
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"host", "127.0.0.1"},
      {"port", "0"},
      {"metrics-port", "0"},
      {"model-repository", GoldenRepository()}};
  std::vector<std::string> argv = {ATTNSERVE_BINARY};
  for (const auto& [flag, value] : defaults) {
    std::string variable = "ATTNSERVE_" + flag + "=";
    for (char& c : variable) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
    const bool overridden =
        std::find(args.begin(), args.end(), "--" + flag) != args.end() ||
        std::any_of(env.begin(), env.end(),
                    [&](const std::string& e) { return e.rfind(variable, 0) == 0; });
    if (!overridden) argv.insert(argv.end(), {"--" + flag, value});
  }
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

int64_t MicrosSince(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::microseconds>(to - from).count();
}

// One finished call of the load test.
struct LoadCall {
  Clock::time_point start, end;
  grpc::Status status;
  v1::AttendRequest request;
  v1::AttendResponse reply;
};

TEST(E2eBinaryTest, SigtermDuringLoadAnswersEveryAcceptedRequestAndExitsZero) {
  // Flags and environment together: the flag wins over ATTNSERVE_MAX_BATCH_SIZE,
  // ATTNSERVE_MAX_BATCH_TOKENS applies.
  auto child = ChildProcess::Start(
      BinaryArgs({"--max-queue-delay-us", "20000", "--max-batch-size", "64",
                  "--drain-timeout-ms", "8000"}),
      {"ATTNSERVE_MAX_BATCH_SIZE=0", "ATTNSERVE_MAX_BATCH_TOKENS=4096"});
  ASSERT_TRUE(child.ok()) << child.status();
  ChildProcess& server = **child;
  const int port = WaitForServingPort(server);
  ASSERT_GT(port, 0) << "no startup line; output:\n" << server.output();
  EXPECT_THAT(server.output(), HasSubstr("max_batch_size=64 max_batch_tokens=4096 "
                                         "max_queue_delay_us=20000"));

  constexpr int kClients = 16;
  const auto hard_stop = Clock::now() + std::chrono::seconds(20);
  std::atomic<int> ok_count{0};
  std::atomic<bool> signalled{false};
  std::vector<std::vector<LoadCall>> calls(kClients);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) channels.push_back(LoopbackChannel(port, i));
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::Attention::NewStub(channels[c % channels.size()]);
      std::mt19937 rng(1000 + c);
      // Until the server turns us away after the signal (or the hard stop).
      for (int k = 0; Clock::now() < hard_stop; ++k) {
        LoadCall call;
        call.request = RandomMixedRequest(rng, k, "mha_plain", 32, 32);
        call.start = Clock::now();
        call.status = CallAttend(*stub, call.request, &call.reply, 10000);
        call.end = Clock::now();
        const bool refused = call.status.error_code() == grpc::StatusCode::UNAVAILABLE;
        if (call.status.ok()) ++ok_count;
        calls[c].push_back(std::move(call));
        if (refused && signalled.load()) break;
      }
    });
  }
  EXPECT_TRUE(WaitFor([&] { return ok_count.load() >= 100; }, std::chrono::seconds(15)));
  const Clock::time_point signal_time = Clock::now();
  signalled = true;
  server.Signal(SIGTERM);
  for (std::thread& t : clients) t.join();
  std::optional<int> status = server.WaitExit(std::chrono::seconds(12));
  if (!status.has_value()) {
    server.Signal(SIGKILL);
    FAIL() << "attnserve did not exit within the drain timeout after SIGTERM; output:\n"
           << server.output();
  }
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "wait status " << *status << "; output:\n" << server.output();
  EXPECT_THAT(server.output(), HasSubstr("SIGTERM"));

  const ReferenceOracle oracle(GoldenRepository());
  int ok = 0, unavailable = 0, in_flight_ok = 0, bad = 0;
  for (const std::vector<LoadCall>& client_calls : calls) {
    for (const LoadCall& call : client_calls) {
      if (call.status.ok()) {
        ++ok;
        if (call.start < signal_time && call.end > signal_time) ++in_flight_ok;
        if (!oracle.Matches("mha_plain", call.request, call.reply)) ++bad;
      } else {
        // Never CANCELLED: gRPC core cancels calls that race with
        // grpc::Server::Shutdown (grpc/grpc#41785), so the server must keep
        // refusing with UNAVAILABLE until clients have heard it.
        EXPECT_EQ(call.status.error_code(), grpc::StatusCode::UNAVAILABLE)
            << call.status.error_message() << "; sent " << MicrosSince(signal_time, call.start)
            << " us after SIGTERM, finished after " << MicrosSince(signal_time, call.end) << " us";
        ++unavailable;
      }
    }
  }
  EXPECT_EQ(bad, 0) << "OK replies that differ from the reference";
  EXPECT_GE(ok, 100);
  EXPECT_GT(in_flight_ok, 0) << "no request in flight at SIGTERM was answered";
  EXPECT_GE(unavailable, kClients) << "every client should end on UNAVAILABLE";
}

TEST(E2eBinaryTest, HelpDocumentsEveryFlagAndExitsZero) {
  const RunResult run = RunToExit({ATTNSERVE_BINARY, "--help"}, {}, std::chrono::seconds(10));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  for (const char* flag :
       {"--host", "--port", "--metrics-port", "--model-repository", "--default-model",
        "--max-batch-size", "--max-batch-tokens", "--max-queue-delay-us", "--max-queue-size",
        "--max-queue-bytes",
        "--threads", "--log-level", "--log-format", "--max-message-bytes", "--drain-timeout-ms",
        "ATTNSERVE_"}) {
    EXPECT_THAT(run.output, HasSubstr(flag));
  }
}

// A bad command line: the binary must exit non-zero (without crashing and
// without starting to serve) and say what is wrong.
struct BadStart {
  std::vector<std::string> args;  // after the loopback defaults
  std::vector<std::string> env;
  std::vector<std::string> message_parts;
};

TEST(E2eBinaryTest, BadFlagsEnvironmentAndRepositoriesExitNonZeroNamingTheProblem) {
  const std::filesystem::path temp = std::filesystem::path(::testing::TempDir()) /
                                     absl::StrCat("attnserve_bad_repo_", getpid());
  std::filesystem::create_directories(temp / "broken");
  std::ofstream(temp / "broken" / "config.json") << "{\"d_model\": 32, \"num_heads\": ";
  const std::string missing = (temp / "does_not_exist").string();
  const std::vector<BadStart> cases = {
      {{"--max-batch-size", "0"}, {}, {"--max-batch-size must be >= 1; was 0"}},
      {{}, {"ATTNSERVE_MAX_BATCH_SIZE=0"}, {"--max-batch-size must be >= 1; was 0"}},
      {{"--port", "70000"}, {}, {"--port must be in [0, 65535]; was 70000"}},
      {{}, {"ATTNSERVE_PORT=70000"}, {"--port must be in [0, 65535]; was 70000"}},
      {{"--max-batch-size", "many"}, {}, {"--max-batch-size", "many"}},
      {{"--log-format", "yaml"}, {}, {"yaml"}},
      {{"--no-such-flag", "1"}, {}, {"--no-such-flag"}},
      {{"--model-repository", missing}, {}, {missing}},
      {{"--model-repository", temp.string()}, {}, {"broken", "config.json"}},
      {{"--default-model", "no_such_model"}, {}, {"no_such_model"}},
  };
  for (const BadStart& c : cases) {
    const std::vector<std::string> args = BinaryArgs(c.args, c.env);
    SCOPED_TRACE(absl::StrCat(c.env.empty() ? "" : c.env[0] + " ",
                              c.args.empty() ? "" : c.args[0] + " " + c.args.back()));
    const RunResult run = RunToExit(args, c.env, std::chrono::seconds(20));
    EXPECT_GT(run.exit_code, 0) << run.output;  // a normal exit, non-zero
    for (const std::string& part : c.message_parts) EXPECT_THAT(run.output, HasSubstr(part));
    EXPECT_THAT(run.output, ::testing::Not(HasSubstr("serving gRPC on")));
  }
  std::filesystem::remove_all(temp);
}

}  // namespace
}  // namespace attnserve::testing
