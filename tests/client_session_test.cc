// Attention.Session through the client: AttentionSession (client/
// attention_client.h) and `attnctl session`, against a real in-process
// server on 127.0.0.1 (tests/golden/data). The open reply describes the
// session and its cache; every chunk's outputs and weights are the last rows
// of a one-shot Attend of the rows so far with mask {causal, window}; the
// server's errors surface from Append and Close with its code and message;
// the stream carries the token and no per-call deadline. attnctl streams and
// verifies a .npy file, exits 2 on a bad command line and 1 on a server
// error, and takes global flags after the subcommand.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/attention_client.h"
#include "client/tensor_io.h"
#include "client/token.h"
#include "server/clock.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"
#include "tests/test_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
constexpr char kModel[] = "mha_plain";  // fp32, no positions: the reference agrees to 1e-5
constexpr double kTolerance = 1e-5;

// `rows` x `d` values uniform in [-1, 1], seeded.
std::vector<float> RandomRows(uint32_t rows, uint32_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  return RandomVector(rng, uint64_t{rows} * d, 1.0f);
}

std::span<const float> Values(const v1::Matrix& m) {
  return {m.data().data(), static_cast<size_t>(m.data_size())};
}

v1::Matrix Rows(const std::vector<float>& all, uint32_t d, uint64_t first, uint32_t n) {
  v1::Matrix m;
  m.set_rows(n);
  m.set_cols(d);
  m.mutable_data()->Assign(all.begin() + first * d, all.begin() + (first + n) * d);
  return m;
}

class SessionClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = LoopbackOptions(GoldenRepository());
    options.default_model = kModel;
    server_ = StartLoopbackServer(options).release();
  }
  static void TearDownTestSuite() { delete server_; }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    client::ClientOptions options;
    options.target = LoopbackTarget(server_->port());
    client_ = client::AttentionClient::Create(options).value();
    v1::ListModelsResponse models;
    ASSERT_TRUE(client_->ListModels(&models).ok());
    for (const v1::ModelInfo& m : models.models()) models_[m.name()] = m;
    dir_ = ::testing::TempDir() + "client_session_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Rows [0, end) of `all` through one-shot Attend with mask {causal, window}.
  v1::AttendResponse OneShot(const std::string& model, const std::vector<float>& all,
                             uint32_t d, uint64_t end, uint32_t window, v1::WeightsMode weights) {
    v1::AttendRequest request;
    request.set_model(model);
    *request.mutable_input() = Rows(all, d, 0, static_cast<uint32_t>(end));
    request.mutable_mask()->set_causal(true);
    request.mutable_mask()->set_window(window);
    request.set_weights(weights);
    v1::AttendResponse reply;
    EXPECT_TRUE(client_->Attend(request, &reply).ok());
    return reply;
  }

  // A .npy file of `rows` x `d` random rows, their values in *values.
  std::string WriteRows(const std::string& name, uint32_t rows, uint32_t d,
                        std::vector<float>* values = nullptr) {
    client::NpyArray array{{rows, d}, RandomRows(rows, d, rows)};
    if (values != nullptr) *values = array.data;
    const std::string path = dir_ + "/" + name;
    EXPECT_TRUE(client::WriteNpy(path, array).ok());
    return path;
  }

  // attnctl ARGS... (no --target added), run to its exit.
  static RunResult Attnctl(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), ATTNCTL_BINARY);
    return RunToExit(args, env, std::chrono::seconds(120));
  }
  static std::string Target() { return LoopbackTarget(server_->port()); }

  static server::AttnServer* server_;
  std::unique_ptr<client::AttentionClient> client_;
  std::map<std::string, v1::ModelInfo> models_;
  std::string dir_;
};
server::AttnServer* SessionClientTest::server_ = nullptr;

// Every model of the golden repository (no, learned, sinusoidal and rotary
// positions), windows from 0 (unbounded) to about the sequence's length,
// chunks of 1 row and of uneven sizes (32 rows in all: the learned model's
// max_length), each weights mode.
TEST_F(SessionClientTest, ChunksEqualTheLastRowsOfOneShotAttend) {
  const std::vector<std::string> models = {"mha_plain", "mha_learned_bf16", "mha_sinusoidal_sep",
                                           "rotary_manual"};
  const std::vector<uint32_t> windows = {0, 1, 5, 16, 31};
  const std::vector<std::vector<uint32_t>> chunkings = {{1, 1, 1, 1, 1, 1}, {7, 3, 12, 1, 9}};
  const v1::WeightsMode kModes[] = {v1::WEIGHTS_NONE, v1::WEIGHTS_PER_HEAD, v1::WEIGHTS_MEAN};
  int variant = 0;
  for (const std::string& model : models) {
    for (uint32_t window : windows) {
      for (const auto& chunks : chunkings) {
        SCOPED_TRACE(model + " window " + std::to_string(window) + " chunks of " +
                     std::to_string(chunks[0]));
        const v1::ModelInfo& info = models_.at(model);
        const uint32_t d = info.d_model();
        const v1::WeightsMode weights = kModes[variant++ % 3];
        v1::SessionOpen open;
        open.set_model(model);
        open.set_window(window);
        open.set_weights(weights);
        open.set_max_tokens(window == 0 ? 40 : 0);
        open.set_session_id("s-" + std::to_string(variant));
        auto session = client_->OpenSession(open);
        ASSERT_TRUE(session.ok()) << session.status();
        const v1::SessionOpened& opened = (*session)->opened();
        EXPECT_EQ((*session)->session_id(), open.session_id());
        EXPECT_EQ(opened.model(), model);
        EXPECT_EQ(opened.version(), info.version());
        EXPECT_EQ(opened.d_model(), d);
        EXPECT_EQ(opened.window(), window);
        uint32_t cache_rows = window > 0 ? window : 40;
        // Sinusoidal and learned positions end at max_length: no more rows
        // need keeping.
        if (info.positional() == "sinusoidal" || info.positional() == "learned") {
          cache_rows = std::min(cache_rows, info.max_length());
        }
        EXPECT_EQ(opened.cache_rows(), cache_rows);
        EXPECT_EQ(opened.cache_bytes(), 2ull * cache_rows * d * 4);  // fp32 keys and values

        const std::vector<float> all = RandomRows(32, d, variant);
        uint64_t position = 0;
        for (uint32_t n : chunks) {
          v1::SessionResponse reply;
          const grpc::Status appended = (*session)->Append(Rows(all, d, position, n), &reply);
          ASSERT_TRUE(appended.ok()) << appended.error_code() << " " << appended.error_message();
          EXPECT_EQ(reply.session_id(), open.session_id());
          EXPECT_EQ(reply.position(), position);
          const uint64_t end = position + n;
          const v1::AttendResponse want = OneShot(model, all, d, end, window, weights);
          ASSERT_EQ(reply.output().rows(), n);
          ASSERT_EQ(reply.output().cols(), d);
          const std::span<const float> one_shot = Values(want.output());
          ASSERT_EQ(one_shot.size(), end * d);
          EXPECT_LE(RelativeL2(Values(reply.output()), one_shot.subspan(position * d)),
                    kTolerance) << "chunk at " << position;
          // Weights: chunk row r over keys [first_key, end) is one-shot row
          // position + r, the same columns.
          ASSERT_EQ(reply.attention_size(), want.attention_size());
          const uint64_t first_key = reply.first_key();
          EXPECT_EQ(first_key, window == 0 || position < window ? 0 : position - window);
          for (int h = 0; h < reply.attention_size(); ++h) {
            const v1::Matrix& got = reply.attention(h);
            ASSERT_EQ(got.rows(), n);
            ASSERT_EQ(got.cols(), end - first_key);
            std::vector<float> expected;
            for (uint64_t r = position; r < end; ++r) {
              const float* row = want.attention(h).data().data() + r * end;
              expected.insert(expected.end(), row + first_key, row + end);
            }
            EXPECT_LE(RelativeL2(Values(got), expected), kTolerance) << "head " << h;
          }
          position = end;
        }
        EXPECT_TRUE((*session)->Close().ok());
      }
    }
  }
}

// A window wider than a model's positions reach is served as the unbounded
// window it amounts to: the cache is max_length rows, and the session takes
// chunks up to max_length.
TEST_F(SessionClientTest, AWindowPastMaxLengthIsServed) {
  for (const std::string model : {"mha_learned_bf16", "mha_sinusoidal_sep"}) {
    SCOPED_TRACE(model);
    const v1::ModelInfo& info = models_.at(model);
    const uint32_t d = info.d_model(), window = info.max_length() + 36;
    v1::SessionOpen open;
    open.set_model(model);
    open.set_window(window);
    auto session = client_->OpenSession(open);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ((*session)->opened().cache_rows(), info.max_length());
    const std::vector<float> all = RandomRows(info.max_length(), d, 5);
    for (uint64_t position = 0; position < info.max_length(); position += 8) {
      v1::SessionResponse reply;
      const grpc::Status s = (*session)->Append(Rows(all, d, position, 8), &reply);
      ASSERT_TRUE(s.ok()) << "chunk at " << position << ": " << s.error_message();
      const v1::AttendResponse want =
          OneShot(model, all, d, position + 8, window, v1::WEIGHTS_NONE);
      EXPECT_LE(RelativeL2(Values(reply.output()), Values(want.output()).subspan(position * d)),
                kTolerance);
    }
    EXPECT_TRUE((*session)->Close().ok());
  }
}

TEST_F(SessionClientTest, ServerErrorsSurfaceFromAppendAndClose) {
  const uint32_t d = models_.at(kModel).d_model();
  const std::vector<float> all = RandomRows(20, d + 1, 3);
  v1::SessionOpen open;
  open.set_window(8);
  auto session = client_->OpenSession(open);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->opened().model(), kModel);  // the default model
  v1::SessionResponse reply;
  ASSERT_TRUE((*session)->Append(Rows(all, d, 0, 4), &reply).ok());
  // A chunk one column too wide ends the stream with the server's status.
  grpc::Status bad = (*session)->Append(Rows(all, d + 1, 0, 2), &reply);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad.error_message();
  EXPECT_THAT(bad.error_message(), HasSubstr(std::to_string(d)));
  // The same status from then on.
  grpc::Status again = (*session)->Append(Rows(all, d, 0, 2), &reply);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(again.error_message(), bad.error_message());
  EXPECT_EQ((*session)->Close().error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Past max_tokens: OUT_OF_RANGE.
  open.set_max_tokens(10);
  session = client_->OpenSession(open);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Append(Rows(all, d, 0, 8), &reply).ok());
  EXPECT_EQ((*session)->Append(Rows(all, d, 8, 8), &reply).error_code(),
            grpc::StatusCode::OUT_OF_RANGE);

  // A refused open: the server's code and message.
  open.set_model("no_such_model");
  session = client_->OpenSession(open);
  EXPECT_EQ(session.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(session.status().message()), HasSubstr("no_such_model"));

  // Nobody listening: UNAVAILABLE, not retried (there is no state to resume).
  const RefusingLoopbackPort refusing;
  client::ClientOptions options;
  options.target = LoopbackTarget(refusing.port());
  auto nowhere = client::AttentionClient::Create(options).value();
  EXPECT_EQ(nowhere->OpenSession(v1::SessionOpen()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(SessionClientTest, AClosedSessionRefusesAppends) {
  auto session = client_->OpenSession(v1::SessionOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_TRUE((*session)->Close().ok());
  EXPECT_TRUE((*session)->Close().ok());
  v1::SessionResponse reply;
  const uint32_t d = models_.at(kModel).d_model();
  EXPECT_EQ((*session)->Append(Rows(RandomRows(1, d, 1), d, 0, 1), &reply).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// The per-call deadline would end a session that outlives it; it does not
// apply to the stream.
TEST_F(SessionClientTest, TheCallDeadlineDoesNotEndASession) {
  client::ClientOptions options;
  options.target = Target();
  options.deadline_ms = 100;
  auto quick = client::AttentionClient::Create(options).value();
  auto session = quick->OpenSession(v1::SessionOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t d = models_.at(kModel).d_model();
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  v1::SessionResponse reply;
  EXPECT_TRUE((*session)->Append(Rows(RandomRows(3, d, 1), d, 0, 3), &reply).ok());
  EXPECT_TRUE((*session)->Close().ok());
}

// A session the server ends for idleness reports DEADLINE_EXCEEDED and the
// server's message from the next Append.
TEST_F(SessionClientTest, AnIdleSessionReportsDeadlineExceeded) {
  server::FakeClock clock;
  server::ServerOptions o = LoopbackOptions(GoldenRepository());
  o.default_model = kModel;
  o.session_clock = &clock;
  o.session_idle_timeout_s = 60;
  auto idle = StartLoopbackServer(o);
  ASSERT_NE(idle, nullptr);
  client::ClientOptions options;
  options.target = LoopbackTarget(idle->port());
  auto client = client::AttentionClient::Create(options).value();
  auto session = client->OpenSession(v1::SessionOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  clock.Advance(61'000'000);
  // Appending before the server has ended it would count as activity.
  ASSERT_TRUE(WaitFor(
      [&] { return GaugeValue(idle->metrics(), "attnserve_sessions_active") == 0; },
      std::chrono::seconds(10)));
  const uint32_t d = models_.at(kModel).d_model();
  v1::SessionResponse reply;
  const grpc::Status s = (*session)->Append(Rows(RandomRows(1, d, 1), d, 0, 1), &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("idle for 61 s"));
}

// The session stream carries the bearer token as every other call does.
TEST_F(SessionClientTest, TheTokenIsSentOnTheSessionStream) {
  const std::string token = client::GenerateToken().value();
  const std::string tokens = dir_ + "/tokens";
  std::ofstream(tokens) << client::TokenFileLine("alice", token) << "\n";
  server::ServerOptions o = LoopbackOptions(GoldenRepository());
  o.default_model = kModel;
  o.security.auth_tokens_path = tokens;
  auto secured = StartLoopbackServer(o);
  ASSERT_NE(secured, nullptr);
  client::ClientOptions options;
  options.target = LoopbackTarget(secured->port());
  auto anonymous = client::AttentionClient::Create(options).value();
  const auto refused = anonymous->OpenSession(v1::SessionOpen());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(refused.status().message()), Not(HasSubstr(token)));
  options.token = token;
  auto alice = client::AttentionClient::Create(options).value();
  auto session = alice->OpenSession(v1::SessionOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_TRUE((*session)->Close().ok());
}

// A draining server ends the session with UNAVAILABLE, after answering the
// chunks it had: Append reports that status, never a reply-less OK.
TEST_F(SessionClientTest, DrainEndsTheSessionWithUnavailable) {
  server::ServerOptions o = LoopbackOptions(GoldenRepository());
  o.default_model = kModel;
  auto draining = StartLoopbackServer(o);
  ASSERT_NE(draining, nullptr);
  client::ClientOptions options;
  options.target = LoopbackTarget(draining->port());
  auto client = client::AttentionClient::Create(options).value();
  auto session = client->OpenSession(v1::SessionOpen());
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t d = models_.at(kModel).d_model();
  const std::vector<float> rows = RandomRows(1, d, 1);
  v1::SessionResponse reply;
  ASSERT_TRUE((*session)->Append(Rows(rows, d, 0, 1), &reply).ok());
  std::thread drain([&] { EXPECT_TRUE(draining->Drain()); });
  grpc::Status status;
  for (int i = 0; i < 10000 && status.ok(); ++i) {
    status = (*session)->Append(Rows(rows, d, 0, 1), &reply);
    if (status.ok()) {
      EXPECT_EQ(reply.output().rows(), 1u);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ((*session)->Close().error_code(), status.error_code());
  drain.join();
}

TEST_F(SessionClientTest, AttnctlSessionStreamsAndVerifies) {
  const uint32_t d = models_.at(kModel).d_model();
  const std::string npy = WriteRows("x.npy", 40, d);
  for (const std::string weights : {"none", "per-head", "mean"}) {
    const RunResult run = Attnctl({"--target", Target(), "session", "--npy", npy, "--chunk", "7",
                                   "--window", "16", "--verify", "--weights", weights});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_THAT(run.output, HasSubstr("model mha_plain"));
    EXPECT_THAT(run.output, HasSubstr("window 16"));
    for (int chunk = 0; chunk < 5; ++chunk) {
      EXPECT_THAT(run.output, HasSubstr("chunk " + std::to_string(chunk) + ": position " +
                                        std::to_string(7 * chunk) + ", rows 7, "));
    }
    EXPECT_THAT(run.output, HasSubstr("chunk 5: position 35, rows 5, "));  // the short last one
    EXPECT_THAT(run.output, HasSubstr("6 chunks, 40 rows in "));
    EXPECT_THAT(run.output, HasSubstr("p50"));
    EXPECT_THAT(run.output, HasSubstr("verify: 6 of 6 chunks checked"));
    EXPECT_THAT(run.output, HasSubstr("): OK"));
    EXPECT_THAT(run.output, Not(HasSubstr("MISMATCH")));
  }
}

// Past max_length a one-shot Attend of a model with positions cannot check
// the chunk: verification stops (rotary sessions go on); a model without
// positions is checked on the last window + n rows.
TEST_F(SessionClientTest, AttnctlVerifiesPastMaxLengthOnlyWithoutPositions) {
  const v1::ModelInfo& rotary = models_.at("rotary_manual");
  std::string npy = WriteRows("rotary.npy", rotary.max_length() + 16, rotary.d_model());
  RunResult run = Attnctl({"session", "--npy", npy, "--chunk", "16", "--window", "8",
                           "--model", "rotary_manual", "--verify", "--target", Target()});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("verify: stopped at position"));
  EXPECT_THAT(run.output, HasSubstr("verify: 4 of 5 chunks checked"));

  const v1::ModelInfo& plain = models_.at(kModel);
  npy = WriteRows("long.npy", plain.max_length() + 104, plain.d_model());
  run = Attnctl({"session", "--npy", npy, "--chunk", "600", "--window", "16", "--verify",
                 "--target", Target()});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("verify: 7 of 7 chunks checked"));
  EXPECT_THAT(run.output, Not(HasSubstr("stopped")));

  // A sinusoidal session itself ends at max_length: the server's error.
  const v1::ModelInfo& sinusoidal = models_.at("mha_sinusoidal_sep");
  npy = WriteRows("sin.npy", sinusoidal.max_length() + 1, sinusoidal.d_model());
  run = Attnctl({"session", "--npy", npy, "--chunk", "16", "--model", "mha_sinusoidal_sep",
                 "--target", Target()});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: OUT_OF_RANGE: "));
}

TEST_F(SessionClientTest, AttnctlSessionExitCodesAndGlobalFlags) {
  const uint32_t d = models_.at(kModel).d_model();
  const std::string npy = WriteRows("x.npy", 10, d);
  // Usage errors: 2.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"session", "--npy", npy},
        std::vector<std::string>{"session", "--npy", npy, "--chunk", "0"},
        std::vector<std::string>{"session", "--chunk", "3"},
        std::vector<std::string>{"session", "--npy", dir_ + "/missing.npy", "--chunk", "3"},
        std::vector<std::string>{"session", "--npy", npy, "--chunk", "3", "--weights", "all"}}) {
    const RunResult run = Attnctl(args, {"ATTNCTL_TARGET=" + Target()});
    EXPECT_EQ(run.exit_code, 2) << run.output;
  }
  // A server error: 1, with the code and message.
  const std::string wide = WriteRows("wide.npy", 10, d + 1);
  RunResult run = Attnctl({"session", "--npy", wide, "--chunk", "3"},
                          {"ATTNCTL_TARGET=" + Target()});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: INVALID_ARGUMENT: "));
  run = Attnctl({"session", "--npy", npy, "--chunk", "3", "--model", "nope"},
                {"ATTNCTL_TARGET=" + Target()});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: NOT_FOUND: "));
  // Global flags after the subcommand: ATTNCTL_TARGET points at nobody, so
  // only --target can have reached the server.
  const RefusingLoopbackPort refusing;
  const std::vector<std::string> dead = {"ATTNCTL_TARGET=" + LoopbackTarget(refusing.port())};
  run = Attnctl({"session", "--npy", npy, "--chunk", "3", "--target", Target(),
                 "--deadline-ms", "100", "--token", "attn_AfterTheSubcommand"}, dead);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("chunk 3: position 9, rows 1, "));
  EXPECT_THAT(run.output, Not(HasSubstr("AfterTheSubcommand")));
  run = Attnctl({"session", "--npy", npy, "--chunk", "3"}, dead);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: UNAVAILABLE: "));
}

}  // namespace
}  // namespace attnserve::testing
