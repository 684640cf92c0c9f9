// attnctl, the real binary, against a real in-process server on 127.0.0.1
// (tests/golden/data): infer from a JSON file and from a .npy file equals the
// reference engine; error statuses exit non-zero with the code and message;
// health exit codes work as a probe; bench with a small bounded load reports
// exactly the calls it made.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "client/tensor_io.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
constexpr char kModel[] = "mha_plain";  // fp32: the reference agrees to 1e-5

class AttnctlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = LoopbackOptions(GoldenRepository());
    options.default_model = kModel;
    server_ = StartLoopbackServer(options).release();
    oracle_ = new ReferenceOracle(GoldenRepository());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete oracle_;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = ::testing::TempDir() + "attnctl_" + info->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // attnctl --target <the server> ARGS..., run to its exit.
  static RunResult Attnctl(std::vector<std::string> args, int port = 0) {
    args.insert(args.begin(), {ATTNCTL_BINARY, "--target",
                               LoopbackTarget(port ? port : server_->port()), "--deadline-ms",
                               "20000"});
    return RunToExit(args, {}, std::chrono::seconds(60));
  }
  std::string Write(const std::string& name, const std::string& bytes) const {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  // The JSON reply attnctl printed (its last output line).
  static v1::AttendResponse ParseReply(const std::string& output) {
    const size_t start = output.rfind("{\"request_id\"");
    v1::AttendResponse reply;
    EXPECT_NE(start, std::string::npos) << output;
    if (start == std::string::npos) return reply;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(output.substr(start), &reply).ok())
        << output;
    return reply;
  }

  static server::AttnServer* server_;
  static ReferenceOracle* oracle_;
  std::string dir_;
};
server::AttnServer* AttnctlTest::server_ = nullptr;
ReferenceOracle* AttnctlTest::oracle_ = nullptr;

TEST_F(AttnctlTest, InferFromJsonEqualsTheReference) {
  std::mt19937 rng(7);
  const uint32_t d = oracle_->config(kModel).d_model;
  for (int variant = 0; variant < 6; ++variant) {
    v1::AttendRequest request = RandomMixedRequest(rng, variant, kModel, d, 40);
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(request, &json).ok());
    const RunResult run = Attnctl({"infer", "--json", Write("request.json", json)});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_TRUE(oracle_->Matches(kModel, request, ParseReply(run.output)));
  }
}

TEST_F(AttnctlTest, InferFromAMatrixJsonWithFlagsEqualsTheReference) {
  const uint32_t d = oracle_->config(kModel).d_model;
  nlohmann::json rows = nlohmann::json::array();
  v1::AttendRequest request;
  request.set_model(kModel);
  request.mutable_input()->set_rows(5);
  request.mutable_input()->set_cols(d);
  for (int i = 0; i < 5; ++i) {
    nlohmann::json row = nlohmann::json::array();
    for (uint32_t k = 0; k < d; ++k) {
      const float v = std::sin(0.37f * i + 0.11f * k);
      row.push_back(v);
      request.mutable_input()->add_data(v);
    }
    rows.push_back(row);
  }
  request.mutable_mask()->set_causal(true);
  request.mutable_mask()->set_window(2);
  request.set_weights(v1::WEIGHTS_PER_HEAD);
  request.set_pooling(v1::POOLING_MEAN);
  const RunResult run =
      Attnctl({"infer", "--json", Write("rows.json", rows.dump()), "--model", kModel, "--causal",
               "--window", "2", "--weights", "per-head", "--pooling", "mean"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(oracle_->Matches(kModel, request, ParseReply(run.output)));
}

TEST_F(AttnctlTest, InferFromNpyEqualsTheReferenceAndWritesNpy) {
  const uint32_t d = oracle_->config(kModel).d_model, L = 7;
  // A .npy written by hand, as NumPy does (version 1.0, header padded to 64).
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (7, " +
                       std::to_string(d) + "), }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8) + char(header.size()) + char(0) + header;
  v1::AttendRequest request;
  request.set_model(kModel);
  request.mutable_input()->set_rows(L);
  request.mutable_input()->set_cols(d);
  for (uint32_t n = 0; n < L * d; ++n) {
    const float v = std::cos(0.05f * n);
    bytes.append(reinterpret_cast<const char*>(&v), 4);
    request.mutable_input()->add_data(v);
  }
  request.set_weights(v1::WEIGHTS_MEAN);
  const std::string npy = Write("input.npy", bytes);
  const RunResult run = Attnctl({"infer", "--npy", npy, "--model", kModel, "--weights", "mean"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(oracle_->Matches(kModel, request, ParseReply(run.output)));

  // --output-npy: the matrices land in .npy files instead.
  const RunResult to_files = Attnctl({"infer", "--npy", npy, "--model", kModel, "--weights",
                                      "mean", "--output-npy", dir_ + "/reply_"});
  ASSERT_EQ(to_files.exit_code, 0) << to_files.output;
  auto output = client::ReadNpy(dir_ + "/reply_output.npy");
  auto attention = client::ReadNpy(dir_ + "/reply_attention.npy");
  ASSERT_TRUE(output.ok() && attention.ok()) << output.status() << attention.status();
  EXPECT_EQ(output->shape, (std::vector<uint64_t>{L, d}));
  EXPECT_EQ(attention->shape, (std::vector<uint64_t>{1, L, L}));
  v1::AttendResponse reply;
  reply.mutable_output()->set_rows(L);
  reply.mutable_output()->set_cols(d);
  reply.mutable_output()->mutable_data()->Assign(output->data.begin(), output->data.end());
  v1::Matrix* mean = reply.add_attention();
  mean->set_rows(L);
  mean->set_cols(L);
  mean->mutable_data()->Assign(attention->data.begin(), attention->data.end());
  EXPECT_TRUE(oracle_->Matches(kModel, request, reply));
}

TEST_F(AttnctlTest, ErrorStatusesExitNonZeroWithCodeAndMessage) {
  const uint32_t d = oracle_->config(kModel).d_model;
  struct Case {
    std::string json;
    std::vector<std::string> extra;
    std::string code, needle;
  };
  auto input = [d](const std::string& first) {
    std::string data = first;
    for (uint32_t k = 1; k < d; ++k) data += ", 0.5";
    return absl::StrCat("{\"input\": {\"rows\": 1, \"cols\": ", d, ", \"data\": [", data, "]}}");
  };
  const std::vector<Case> cases = {
      {input("0.5"), {"--model", "no_such_model"}, "NOT_FOUND", "no_such_model"},
      {input("\"NaN\""), {}, "INVALID_ARGUMENT", "not finite"},
      {"{\"input\": {\"rows\": 1, \"cols\": 3, \"data\": [1, 2, 3]}}", {}, "INVALID_ARGUMENT",
       "expects d_model"},
      {input("0.5"), {"--edges", "0,5"}, "INVALID_ARGUMENT", "edges"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"infer", "--json", Write("bad.json", c.json)};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    const RunResult run = Attnctl(args);
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_THAT(run.output, HasSubstr("error: " + c.code + ": ")) << c.needle;
    EXPECT_THAT(run.output, HasSubstr(c.needle));
  }
  // A file that is not a request is a usage error (2), not a server error.
  const RunResult bad_file = Attnctl({"infer", "--json", Write("x.json", "{\"nope\": 1}")});
  EXPECT_EQ(bad_file.exit_code, 2) << bad_file.output;
  EXPECT_THAT(bad_file.output, HasSubstr("x.json"));
  const RunResult no_input = Attnctl({"infer"});
  EXPECT_EQ(no_input.exit_code, 2) << no_input.output;
}

TEST_F(AttnctlTest, HealthExitCodesWorkAsAProbe) {
  RunResult run = Attnctl({"health"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("SERVING"));
  run = Attnctl({"health", "--service", kModel});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  run = Attnctl({"health", "--service", "no_such_model"});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("NOT_FOUND"));
  // Nobody listens on a port held bound but not listening: UNAVAILABLE,
  // after no retries.
  const RefusingLoopbackPort refusing;
  ASSERT_GT(refusing.port(), 0);
  run = Attnctl({"--retries", "0", "health"}, refusing.port());
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("UNAVAILABLE"));
}

TEST_F(AttnctlTest, GlobalFlagsWorkBeforeOrAfterTheSubcommand) {
  const std::string live = LoopbackTarget(server_->port());
  const RefusingLoopbackPort refusing;  // nobody listens there
  ASSERT_GT(refusing.port(), 0);
  const std::string dead = LoopbackTarget(refusing.port());
  auto run = [](std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), ATTNCTL_BINARY);
    return RunToExit(args, env, std::chrono::seconds(60));
  };
  // Every subcommand, each global flag after it (ATTNCTL_TARGET points at
  // nobody: only the flag can have reached the server).
  const std::vector<std::string> dead_env = {"ATTNCTL_TARGET=" + dead};
  const std::vector<std::vector<std::string>> after = {
      {"health", "--target", live},
      {"health", "--service", kModel, "--target", live, "--deadline-ms", "5000", "--retries",
       "0", "--lb", "round_robin"},
      {"models", "--target", live, "--token", "attn_AfterTheSubcommand"},
      {"infer", "--random", "3", "--target", live, "--model", kModel},
      {"bench", "-n", "5", "--target", live, "--format", "json", "--deadline-ms", "9000"},
  };
  for (const auto& args : after) {
    const RunResult r = run(args, dead_env);
    EXPECT_EQ(r.exit_code, 0) << absl::StrJoin(args, " ") << "\n" << r.output;
    EXPECT_THAT(r.output, Not(HasSubstr("AfterTheSubcommand")));
  }
  // ... and before it, the same.
  RunResult r = run({"--target", live, "--retries", "0", "health"}, dead_env);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // A flag after the subcommand really takes effect: the live env target is
  // overridden by a dead --target, a bad deadline or TLS file is refused.
  const std::vector<std::string> live_env = {"ATTNCTL_TARGET=" + live};
  r = run({"health", "--target", dead, "--retries", "0"}, live_env);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("UNAVAILABLE"));
  r = run({"models", "--deadline-ms", "0"}, live_env);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("deadline_ms must be positive"));
  r = run({"infer", "--random", "2", "--tls-ca", "/nonexistent/ca.pem"}, live_env);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("cannot read TLS file /nonexistent/ca.pem"));
  r = run({"health", "--tls-cert", "/nonexistent/client.pem"}, live_env);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("private key"));
  // Flags nobody knows are still refused, wherever they are.
  r = run({"health", "--no-such-flag"}, live_env);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--no-such-flag"));
  // Subcommand help points at the global flags.
  r = run({"health", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("go before or after the subcommand"));
}

TEST_F(AttnctlTest, TheTokenIsNeverEchoed) {
  const std::string secret = "attn_NeverEchoedSecretValue";
  const std::vector<std::string> env = {"ATTNCTL_TOKEN=" + secret,
                                        "ATTNCTL_TARGET=" + LoopbackTarget(server_->port())};
  const std::string argv_secret = "attn_NeverEchoedEither_0123456789abcdefghijklmnopq";
  const std::vector<std::vector<std::string>> commands = {
      {"--help"},
      {"health", "--help"},
      {"models", "--token", secret, "--no-such-flag"},
      {"models", "--token=" + secret, "surplus"},
      {"--token", "-" + secret, "models"},
      {"--token", secret + " x", "models"},
      {"models", "--token", secret},  // plaintext: a warning, not the token
      {"models", argv_secret},        // the flag forgotten: an unexpected argument
      {"models", "--token", "x" + argv_secret.substr(5) + "\n"},
  };
  for (const auto& command : commands) {
    std::vector<std::string> args = {ATTNCTL_BINARY};
    args.insert(args.end(), command.begin(), command.end());
    const RunResult r = RunToExit(args, env, std::chrono::seconds(60));
    EXPECT_THAT(r.output, Not(HasSubstr("NeverEchoed"))) << absl::StrJoin(command, " ");
    EXPECT_THAT(r.output, Not(HasSubstr("0123456789abcdef"))) << absl::StrJoin(command, " ");
  }
  // The help names the variable, never its value.
  const RunResult help = RunToExit({ATTNCTL_BINARY, "--help"}, env, std::chrono::seconds(60));
  EXPECT_THAT(help.output, HasSubstr("ATTNCTL_TOKEN"));
}

TEST_F(AttnctlTest, ModelsListsTheRepository) {
  const RunResult run = Attnctl({"models"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  v1::ListModelsResponse models;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  run.output.substr(run.output.find('{')), &models).ok()) << run.output;
  std::vector<std::string> names;
  for (const auto& m : models.models()) names.push_back(m.name());
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("mha_learned_bf16", "mha_plain",
                                                     "mha_sinusoidal_sep", "rotary_manual"));
}

// load, unload and repository against a server of its own
// (--model-control explicit) on a copy of one golden model; the shared
// server (--model-control none) refuses load with FAILED_PRECONDITION.
TEST_F(AttnctlTest, LoadUnloadAndRepositoryManageModels) {
  namespace fs = std::filesystem;
  const fs::path repo = fs::path(dir_) / "repo";
  fs::create_directories(repo);
  fs::copy(fs::path(GoldenRepository()) / "mha_plain", repo / "mha_plain");
  server::ServerOptions options = LoopbackOptions(repo.string());
  options.model_control = server::ModelControl::kExplicit;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const int port = server->port();

  fs::copy(fs::path(GoldenRepository()) / "rotary_manual", repo / "rotary_manual");
  RunResult run = Attnctl({"load", "rotary_manual"}, port);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  v1::LoadModelResponse loaded;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  run.output.substr(run.output.find('{')), &loaded).ok()) << run.output;
  EXPECT_EQ(loaded.model().name(), "rotary_manual");
  EXPECT_TRUE(loaded.changed());
  EXPECT_EQ(loaded.model().version(), server->registry().Find("rotary_manual")->version());

  run = Attnctl({"repository"}, port);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  v1::ListRepositoryResponse list;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  run.output.substr(run.output.find('{')), &list).ok()) << run.output;
  ASSERT_EQ(list.models_size(), 2);
  EXPECT_EQ(list.models(1).name(), "rotary_manual");
  EXPECT_EQ(list.models(1).state(), v1::MODEL_STATE_READY);

  run = Attnctl({"unload", "rotary_manual"}, port);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(server->registry().Find("rotary_manual"), nullptr);
  run = Attnctl({"unload", "rotary_manual"}, port);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: NOT_FOUND: "));
  run = Attnctl({"load", "no_such_dir"}, port);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: NOT_FOUND: "));
  run = Attnctl({"load"}, port);
  EXPECT_EQ(run.exit_code, 2) << run.output;  // usage: the model is required

  run = Attnctl({"load", "mha_plain"});  // the shared server: --model-control none
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("error: FAILED_PRECONDITION: "));
}

TEST_F(AttnctlTest, BenchReportsExactlyTheCallsItMade) {
  RunResult run = Attnctl({"bench", "-n", "60", "-c", "6", "--connections", "2", "--lengths",
                           "4:0.5,16:0.3,33:0.2", "--weights", "mean", "--format", "json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  nlohmann::json report = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  EXPECT_EQ(report["calls"], 60);
  EXPECT_EQ(report["ok"], 60);
  EXPECT_EQ(report["codes"], nlohmann::json({{"OK", 60}}));
  EXPECT_GE(report["mean_batch_size"].get<double>(), 1.0);
  EXPECT_GT(report["latency_ms"]["p99"].get<double>(), 0.0);

  // Open loop, the mix from a ghz-style data file; errors are counted by code.
  const uint32_t d = oracle_->config(kModel).d_model;
  std::string data;
  for (uint32_t k = 0; k < 2 * d; ++k) data += k ? ", 0.25" : "0.25";
  const std::string file = Write(
      "data.json", absl::StrCat("[{\"model\": \"", kModel, "\", \"input\": {\"rows\": 2, \"cols\": ",
                                d, ", \"data\": [", data, "]}}, {\"model\": \"nope\", \"input\": ",
                                "{\"rows\": 2, \"cols\": ", d, ", \"data\": [", data, "]}}]"));
  run = Attnctl({"bench", "-n", "20", "--rps", "400", "--data", file, "--format", "json"});
  EXPECT_EQ(run.exit_code, 1) << run.output;  // not every call was OK
  report = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  EXPECT_EQ(report["calls"].get<int>() + report["skipped"].get<int>(), 20);
  EXPECT_EQ(report["codes"]["OK"].get<int>() + report["codes"]["NOT_FOUND"].get<int>(),
            report["calls"].get<int>());
  EXPECT_GE(report["codes"]["NOT_FOUND"].get<int>(), 1);
}

}  // namespace
}  // namespace attnserve::testing
