// Helpers shared by the end-to-end tests: starting servers on 127.0.0.1,
// building requests, running the attnserve binary as a child process.
#ifndef ATTNSERVE_TESTS_E2E_UTIL_H_
#define ATTNSERVE_TESTS_E2E_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "core/engine.h"
#include "server/server.h"

namespace attnserve::testing {

// Options for an in-process server on 127.0.0.1, any free gRPC port,
// metrics off, on the model repository `repository`.
server::ServerOptions LoopbackOptions(const std::string& repository);


// ---- Clients, oracle, raw health/reflection calls, child processes. ----

// tests/golden/data: mha_learned_bf16 (the default: first by name),
// mha_plain, mha_sinusoidal_sep, rotary_manual.
std::string GoldenRepository();

// AttnServer::Start(options), with a test failure (and nullptr) on error.
std::unique_ptr<server::AttnServer> StartLoopbackServer(const server::ServerOptions& options);

// A blocking Attend with a deadline `deadline_ms` from now.
grpc::Status CallAttend(v1::Attention::Stub& stub, const v1::AttendRequest& request,
                        v1::AttendResponse* reply, int64_t deadline_ms = 20000);

// "127.0.0.1:PORT".
std::string LoopbackTarget(int port);

// An insecure channel to 127.0.0.1:port. Channels with different `index`
// never share a connection (each has its own subchannel pool).
std::shared_ptr<grpc::Channel> LoopbackChannel(int port, int index = 0);

// A deadline `ms` milliseconds from now, for ClientContext::set_deadline.
std::chrono::system_clock::time_point DeadlineIn(int64_t ms);

// Polls `condition` every millisecond until it holds (true) or `timeout`
// passes (false).
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

// A request for `model` whose input is `length` rows of `d_model` values
// uniform in [-1, 1]; no mask, no weights, no pooling, no request_id.
v1::AttendRequest RandomRequest(std::mt19937& rng, const std::string& model,
                                uint32_t d_model, uint32_t length);

// A 2 x 3 request with fixed values and no model name: for scripted or
// recording servers that look at calls, not at the numbers.
v1::AttendRequest SmallRequest();

// A RandomRequest of random length in [1, max_length] with a mask (none,
// causal, window, causal + window, or a random graph in which some rows get
// no key), weights mode and pooling chosen by `variant` (cycle through
// 0, 1, 2, ... to cover every combination).
v1::AttendRequest RandomMixedRequest(std::mt19937& rng, int variant, const std::string& model,
                                     uint32_t d_model, uint32_t max_length);

// The reference engine (core::CreateReferenceEngine) of every model of a
// model repository, loaded with core::LoadModel: the oracle replies are
// compared with. Thread-safe.
class ReferenceOracle {
 public:
  explicit ReferenceOracle(const std::string& repository);

  // The config of model `name` (which must exist).
  const core::ModelConfig& config(const std::string& name) const;

  // Success when `reply` is the answer of model `model` to `request`: output
  // shape and values, and the attention matrices of the weights mode, each
  // within relative L2 `tolerance` of the reference.
  ::testing::AssertionResult Matches(const std::string& model, const v1::AttendRequest& request,
                                     const v1::AttendResponse& reply,
                                     double tolerance = 1e-5) const;

 private:
  std::map<std::string, std::unique_ptr<core::Engine>> engines_;
};

// grpc.health.v1.Health/Check for `service` with raw protobuf bytes (Debian
// ships no generated health stubs). On OK, *serving_status is the
// HealthCheckResponse status (1 = SERVING, 2 = NOT_SERVING).
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int* serving_status, int64_t deadline_ms = 5000);

// One slice holding `bytes`, and all of a ByteBuffer's bytes: for raw calls
// through grpc::GenericStub.
grpc::ByteBuffer ToByteBuffer(const std::string& bytes);
std::string FromByteBuffer(const grpc::ByteBuffer& buffer);

// One grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo
// exchange in raw bytes (reflection has no generated stubs here): sends
// `request` (a serialized ServerReflectionRequest), half-closes, and puts the
// first ServerReflectionResponse's bytes in *reply.
grpc::Status ReflectionExchange(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& request, std::string* reply,
                                int64_t deadline_ms = 5000);

// ReflectionExchange with a list_services request; *services receives the
// listed names.
grpc::Status ReflectionListServices(const std::shared_ptr<grpc::Channel>& channel,
                                    std::vector<std::string>* services,
                                    int64_t deadline_ms = 5000);

// The value of counter `family` with exactly `labels` in `metrics`; 0 when
// the series does not exist.
double CounterValue(server::Metrics& metrics, const std::string& family,
                    const std::map<std::string, std::string>& labels);

// The value of gauge `family` (no labels) in `metrics`; -1 when absent.
double GaugeValue(server::Metrics& metrics, const std::string& family);

// A child process (the attnserve binary) with stdout and stderr captured
// into one buffer by a reader thread. The destructor SIGKILLs it if it still
// runs, then reaps it. Thread-safe.
class ChildProcess {
 public:
  // Starts argv[0] with `argv`; the environment is this process's without
  // any ATTNSERVE_* variable, plus `env` ("NAME=value").
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  void Signal(int signal_number);

  // The first output line containing `needle`, waiting at most `timeout`;
  // nullopt on timeout or when the output ended without it.
  std::optional<std::string> WaitForLine(const std::string& needle,
                                         std::chrono::milliseconds timeout);
  // The wait status (for WIFEXITED/WEXITSTATUS) once the process exits;
  // nullopt if it still runs after `timeout`.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout);
  // Everything captured so far.
  std::string output() const;
  // Waits (at most `timeout`) until the output has ended, i.e. the process
  // and everything it started closed it; returns everything captured.
  std::string WaitOutputEnd(std::chrono::milliseconds timeout);

 private:
  ChildProcess() = default;
  void ReadOutput(int fd);

  pid_t pid_ = -1;
  std::thread reader_;  // started by Start, joined by the destructor

  mutable std::mutex mu_;
  std::condition_variable cv_;  // output grew or ended
  std::string output_;          // guarded by mu_
  bool output_done_ = false;    // guarded by mu_
  std::optional<int> exit_status_;  // guarded by mu_
};

// The gRPC port the attnserve binary `server` announced on its startup line
// ("serving gRPC on 127.0.0.1:PORT"), waiting at most `timeout`; 0 when it
// did not announce one in that time.
int WaitForServingPort(ChildProcess& server,
                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Runs argv to completion (at most `timeout`, then SIGKILL and a failure);
// returns its exit code (-1 when it did not exit normally) and its output.
struct RunResult {
  int exit_code = -1;
  std::string output;
};
RunResult RunToExit(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    std::chrono::milliseconds timeout);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_E2E_UTIL_H_
