// The container image (make image), run for real with the engine
// tools/image.sh detects (docker or podman): read-only root, uid:gid
// 10001:10001, every capability dropped, host network on 127.0.0.1 ports.
// The embedded demo model answers like the reference engine through the
// image's own attnctl; /metrics passes promtool; a mounted model repository
// is served; ldd finds every library; SIGTERM during a load drains (exit 0,
// every call answered OK or refused UNAVAILABLE); version, labels, healthcheck.
//
// Run by `make image-test` (ctest -L image), not by `make test`: it needs the
// image. Reported skipped only when the engine can start no container at all
// (the engine's error is printed); a missing image is a failure.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/version.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Seconds = std::chrono::seconds;

const std::string kSource = ATTNSERVE_SOURCE_DIR;

// The engine command line from tools/image.sh, and the container runs.
class Engine {
 public:
  // exit 0: ok; 77: no container can start (skip); other: a failure.
  static RunResult Detect(Engine* engine) {
    RunResult run = RunToExit({"/bin/sh", kSource + "/tools/image.sh", "engine"}, {}, Seconds(120));
    if (run.exit_code != 0) return run;
    const std::string line = run.output.substr(run.output.rfind('\n', run.output.size() - 2) + 1);
    engine->command_ = absl::StrSplit(line, absl::ByAnyChar(" \n"), absl::SkipWhitespace());
    RunResult args = RunToExit({"/bin/sh", kSource + "/tools/image.sh", "run-args"}, {},
                               Seconds(60));
    engine->run_args_ = absl::StrSplit(args.output, absl::ByAnyChar(" \n"), absl::SkipWhitespace());
    return args;
  }

  // ENGINE args..., to its exit (bounded).
  RunResult Run(const std::vector<std::string>& args, Seconds timeout = Seconds(120)) const {
    return RunToExit(Argv(args), {}, timeout);
  }
  // ENGINE run <the host's run arguments> args..., to its exit (bounded).
  RunResult RunContainer(const std::vector<std::string>& args,
                         Seconds timeout = Seconds(120)) const {
    return RunToExit(RunArgv(args), {}, timeout);
  }
  std::vector<std::string> RunArgv(const std::vector<std::string>& args) const {
    std::vector<std::string> all = {"run"};
    all.insert(all.end(), run_args_.begin(), run_args_.end());
    all.insert(all.end(), args.begin(), args.end());
    return Argv(all);
  }
  std::vector<std::string> Argv(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {"/usr/bin/env"};  // finds the engine on PATH
    argv.insert(argv.end(), command_.begin(), command_.end());
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  bool is_podman() const { return !command_.empty() && command_[0] == "podman"; }

 private:
  std::vector<std::string> command_;
  std::vector<std::string> run_args_;
};

// What every container here runs with.
std::vector<std::string> Hardened() {
  return {"--network", "host",      "--read-only", "--user",       "10001:10001",
          "--cap-drop", "ALL", "--security-opt", "no-new-privileges"};
}

std::string Image() { return absl::StrCat("attnserve:", server::Version()); }

// A running attnserve container (by name) on 127.0.0.1 with its own ports;
// port 0 when it failed to start.
struct Server {
  std::string name;
  int port = 0, metrics_port = 0;
};

// Removes container `name` (running or not) when it goes out of scope, so a
// failing test leaves none behind.
class Removal {
 public:
  Removal(const Engine* engine, std::string name) : engine_(engine), name_(std::move(name)) {}
  ~Removal() { engine_->Run({"rm", "-f", name_}); }

 private:
  const Engine* engine_;
  std::string name_;
};

class ImageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    engine_ = new Engine;
    const RunResult detect = Engine::Detect(engine_);
    if (detect.exit_code == 77) {
      skip_reason_ = "no container can start on this host: " + detect.output;
      return;
    }
    if (detect.exit_code != 0) {
      setup_error_ = "tools/image.sh engine: " + detect.output;
      return;
    }
    dir_ = absl::StrCat(::testing::TempDir(), "attnserve_image_test_", getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/requests");
    std::filesystem::create_directories(dir_ + "/repository/mha_plain");
    for (const char* file : {"config.json", "weights.safetensors"}) {
      std::filesystem::copy_file(kSource + "/tests/golden/data/mha_plain/" + file,
                                 dir_ + "/repository/mha_plain/" + file);
    }
    // The container's user (10001) reads these.
    std::filesystem::permissions(dir_, std::filesystem::perms(0755));
    main_ = new Server(Start("main", {"-v", dir_ + "/requests:/requests:ro"}));
  }
  static void TearDownTestSuite() {
    if (main_ != nullptr) engine_->Run({"rm", "-f", main_->name});
    delete main_;
    delete engine_;
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    ASSERT_TRUE(main_ != nullptr && main_->port != 0) << setup_error_;
  }

  // Starts the image detached as container attnserve-image-test-PID-SUFFIX
  // with `extra` run arguments, and waits until its health is SERVING.
  static Server Start(const std::string& suffix, std::vector<std::string> extra) {
    Server s{absl::StrCat("attnserve-image-test-", getpid(), "-", suffix), FreeLoopbackPort(),
             FreeLoopbackPort()};
    std::vector<std::string> args = {"-d", "--name", s.name};
    for (const std::string& a : Hardened()) args.push_back(a);
    for (const std::string& e :
         {absl::StrCat("ATTNSERVE_HOST=127.0.0.1"), absl::StrCat("ATTNSERVE_PORT=", s.port),
          absl::StrCat("ATTNSERVE_METRICS_HOST=127.0.0.1"),
          absl::StrCat("ATTNSERVE_METRICS_PORT=", s.metrics_port),
          absl::StrCat("ATTNCTL_TARGET=127.0.0.1:", s.port)}) {
      args.insert(args.end(), {"-e", e});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(Image());
    const RunResult run = engine_->RunContainer(args);
    if (run.exit_code != 0) {
      setup_error_ += absl::StrCat("starting ", Image(), " failed: ", run.output);
      s.port = 0;
      return s;
    }
    const bool serving = WaitFor(
        [&] {
          int status = 0;
          return HealthCheck(LoopbackChannel(s.port), "", &status, 1000).ok() && status == 1;
        },
        std::chrono::seconds(90));
    if (!serving) {
      setup_error_ += absl::StrCat("container ", s.name, " never served: ",
                                   engine_->Run({"logs", s.name}).output);
      s.port = 0;
    }
    return s;
  }

  // ENGINE exec CONTAINER args...
  static RunResult Exec(const Server& s, const std::vector<std::string>& args) {
    std::vector<std::string> all = {"exec", s.name};
    all.insert(all.end(), args.begin(), args.end());
    return engine_->Run(all);
  }
  static std::string Inspect(const std::string& what, const std::string& format) {
    RunResult run = engine_->Run({"inspect", "--format", format, what});
    EXPECT_EQ(run.exit_code, 0) << run.output;
    while (!run.output.empty() && run.output.back() == '\n') run.output.pop_back();
    return run.output;
  }
  static v1::AttendResponse ParseReply(const std::string& output) {
    const size_t start = output.rfind("{\"request_id\"");
    v1::AttendResponse reply;
    EXPECT_NE(start, std::string::npos) << output;
    if (start == std::string::npos) return reply;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(output.substr(start), &reply).ok())
        << output;
    return reply;
  }

  static Engine* engine_;
  static Server* main_;
  static std::string dir_, skip_reason_, setup_error_;
};
Engine* ImageTest::engine_ = nullptr;
Server* ImageTest::main_ = nullptr;
std::string ImageTest::dir_, ImageTest::skip_reason_, ImageTest::setup_error_;

TEST_F(ImageTest, RunsAsUser10001WithNoCapabilities) {
  // PID 1 is attnserve itself (exec-form ENTRYPOINT), so SIGTERM reaches it.
  const RunResult status = Exec(*main_, {"cat", "/proc/1/status"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("Name:\tattnserve"));
  EXPECT_THAT(status.output, HasSubstr("Uid:\t10001\t10001\t10001\t10001"));
  EXPECT_THAT(status.output, HasSubstr("Gid:\t10001\t10001\t10001\t10001"));
  EXPECT_THAT(status.output, HasSubstr("CapEff:\t0000000000000000"));
  const RunResult mounts = Exec(*main_, {"cat", "/proc/1/mounts"});
  ASSERT_EQ(mounts.exit_code, 0) << mounts.output;
  EXPECT_TRUE(std::regex_search(mounts.output, std::regex(R"((^|\n)\S+ / \S+ ro[, ])")))
      << "the root filesystem is not read-only:\n" << mounts.output;
  EXPECT_EQ(Inspect(Image(), "{{.Config.User}}"), "10001:10001");
}

TEST_F(ImageTest, AttnctlHealthInsideAndOutside) {
  const RunResult inside = Exec(*main_, {"attnctl", "health"});
  EXPECT_EQ(inside.exit_code, 0) << inside.output;
  EXPECT_THAT(inside.output, HasSubstr("SERVING"));
  const RunResult model = Exec(*main_, {"attnctl", "health", "--service", "demo"});
  EXPECT_EQ(model.exit_code, 0) << model.output;
  int status = 0;
  ASSERT_TRUE(HealthCheck(LoopbackChannel(main_->port), "demo", &status).ok());
  EXPECT_EQ(status, 1);  // SERVING
}

TEST_F(ImageTest, InferThroughTheImagesAttnctlEqualsTheReference) {
  const ReferenceOracle oracle(kSource + "/models");
  const uint32_t d = oracle.config("demo").d_model;
  std::mt19937 rng(12);
  for (int variant = 0; variant < 4; ++variant) {
    const v1::AttendRequest request = RandomMixedRequest(rng, variant, "demo", d, 24);
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(request, &json).ok());
    const std::string name = absl::StrCat("request", variant, ".json");
    std::ofstream(dir_ + "/requests/" + name) << json;
    const RunResult run = Exec(*main_, {"attnctl", "infer", "--json", "/requests/" + name});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_TRUE(oracle.Matches("demo", request, ParseReply(run.output))) << "variant " << variant;
  }
}

TEST_F(ImageTest, MetricsPassPromtool) {
  ASSERT_TRUE(HavePromtool()) << kPromtoolHint;
  ASSERT_EQ(Exec(*main_, {"attnctl", "infer", "--random", "3"}).exit_code, 0);
  const std::optional<HttpResponse> metrics = HttpGet(main_->metrics_port, "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body, HasSubstr("attnserve_requests_total{code=\"OK\",model=\"demo\"}"));
  const CommandResult check = PromtoolCheckMetrics(metrics->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST_F(ImageTest, LddFindsEveryLibrary) {
  const RunResult run = engine_->RunContainer(
      {"--rm", "--network", "none", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
       "--entrypoint", "/usr/bin/ldd", Image(), "/usr/local/bin/attnserve",
       "/usr/local/bin/attnctl"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, Not(HasSubstr("not found")));
  for (const char* lib : {"libdnnl.so.2", "libgrpc++.so.1.51", "libprotobuf.so.32",
                          "libprometheus-cpp-pull.so", "libspdlog.so", "libOpenCL.so.1"}) {
    EXPECT_THAT(run.output, HasSubstr(lib));
  }
}

TEST_F(ImageTest, VersionLabelsAndHealthcheck) {
  const RunResult version = engine_->RunContainer(
      {"--rm", "--network", "none", "--user", "10001:10001", "--cap-drop", "ALL", Image(),
       "--version"});
  ASSERT_EQ(version.exit_code, 0) << version.output;
  const std::string prefix = absl::StrCat("attnserve ", server::Version(), " (git ");
  const size_t at = version.output.find(prefix);
  ASSERT_NE(at, std::string::npos) << version.output;
  const size_t from = at + prefix.size();
  const std::string revision = version.output.substr(from, version.output.find(')', from) - from);
  EXPECT_FALSE(revision.empty());
  const std::string labels = "{{index .Config.Labels \"org.opencontainers.image.";
  EXPECT_EQ(Inspect(Image(), labels + "version\"}}"), server::Version());
  EXPECT_EQ(Inspect(Image(), labels + "revision\"}}"), revision);
  EXPECT_FALSE(Inspect(Image(), labels + "source\"}}").empty());
  // The startup log names the version too.
  EXPECT_THAT(engine_->Run({"logs", main_->name}).output, HasSubstr(prefix + revision + ")"));
  // The image's HEALTHCHECK (attnctl health) passes.
  if (engine_->is_podman()) {
    const RunResult health = engine_->Run({"healthcheck", "run", main_->name});
    EXPECT_EQ(health.exit_code, 0) << health.output;
  } else {
    EXPECT_TRUE(WaitFor([&] { return Inspect(main_->name, "{{.State.Health.Status}}") == "healthy"; },
                        std::chrono::seconds(60)));
  }
}

TEST_F(ImageTest, ServesAMountedModelRepository) {
  Server models = Start("models", {"-v", dir_ + "/repository:/models:ro", "-e",
                                   "ATTNSERVE_MODEL_REPOSITORY=/models"});
  Removal removal(engine_, models.name);
  ASSERT_NE(models.port, 0) << setup_error_;
  auto stub = v1::Attention::NewStub(LoopbackChannel(models.port));
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(10000));
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&context, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).name(), "mha_plain");
  const ReferenceOracle oracle(GoldenRepository());
  std::mt19937 rng(5);
  for (int variant = 0; variant < 6; ++variant) {
    const v1::AttendRequest request =
        RandomMixedRequest(rng, variant, "mha_plain", oracle.config("mha_plain").d_model, 30);
    v1::AttendResponse reply;
    ASSERT_TRUE(CallAttend(*stub, request, &reply).ok());
    EXPECT_TRUE(oracle.Matches("mha_plain", request, reply)) << "variant " << variant;
  }
}

// The value of the series `series` (name and labels, exactly as exposed).
double SeriesValue(const std::string& exposition, const std::string& series) {
  const size_t at = exposition.find("\n" + series + " ");
  return at == std::string::npos ? 0 : std::stod(exposition.substr(at + series.size() + 2));
}

TEST_F(ImageTest, StopDuringABenchDrainsAndExitsZero) {
  Server s = Start("drain", {});
  Removal removal(engine_, s.name), bench_removal(engine_, s.name + "-bench");
  ASSERT_NE(s.port, 0) << setup_error_;
  // Open loop at a steady rate, as traffic from many clients arrives (a
  // closed loop would resend each refusal at once, tens of thousands a second).
  std::vector<std::string> bench = {"--rm", "--name", s.name + "-bench"};
  for (const std::string& a : Hardened()) bench.push_back(a);
  bench.insert(bench.end(), {"--entrypoint", "/usr/local/bin/attnctl", Image(), "--target",
                             LoopbackTarget(s.port), "bench", "-c", "8", "--rps", "200", "-z",
                             "10s", "--lengths", "16,64", "--format", "json"});
  auto client = ChildProcess::Start(engine_->RunArgv(bench));
  ASSERT_TRUE(client.ok()) << client.status();
  // Stop once the load is well under way.
  const std::string ok_series = "attnserve_requests_total{code=\"OK\",model=\"demo\"}";
  EXPECT_TRUE(WaitFor(
      [&] {
        const auto metrics = HttpGet(s.metrics_port, "/metrics");
        return metrics && SeriesValue(metrics->body, ok_series) >= 20;
      },
      std::chrono::seconds(60)));
  const RunResult stop = engine_->Run({"stop", "-t", "30", s.name});
  EXPECT_EQ(stop.exit_code, 0) << stop.output;
  EXPECT_EQ(Inspect(s.name, "{{.State.ExitCode}}"), "0");
  const std::string logs = engine_->Run({"logs", s.name}).output;
  EXPECT_THAT(logs, HasSubstr("received SIGTERM"));
  EXPECT_THAT(logs, HasSubstr("drained cleanly"));

  // Every call the bench made was answered: OK, or refused while draining.
  ASSERT_TRUE((*client)->WaitExit(std::chrono::seconds(60)).has_value());
  const std::string output = (*client)->output();
  const size_t json = output.rfind("{\"calls\"");
  ASSERT_NE(json, std::string::npos) << output;
  const nlohmann::json report = nlohmann::json::parse(output.substr(json));
  uint64_t answered = 0;
  for (const auto& [code, calls] : report["codes"].items()) {
    EXPECT_THAT(code, ::testing::AnyOf("OK", "UNAVAILABLE")) << output;
    answered += calls.get<uint64_t>();
  }
  EXPECT_EQ(answered, report["calls"].get<uint64_t>());
  EXPECT_GE(report["ok"].get<uint64_t>(), 20u);
}

}  // namespace
}  // namespace attnserve::testing
