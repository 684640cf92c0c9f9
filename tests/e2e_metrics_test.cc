// End-to-end test of the Prometheus metrics (DESIGN.md, "Metrics"). An
// in-process AttnServer on 127.0.0.1 answers a known mix of OK and failed
// requests, sent one at a time so every batch holds exactly one request;
// then (1) a scrape of GET /metrics shows exactly those counts, (2) the
// scrape passes `promtool check metrics`, and (3) a real Prometheus server
// scraping attnserve every second returns the same attnserve_requests_total
// through its HTTP query API.
//
// Network only on 127.0.0.1; every wait is bounded. The Prometheus child is
// stopped by an RAII guard, and by PR_SET_PDEATHSIG should this process die.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "attnserve/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"
#include "tests/test_util.h"

namespace attnserve::testing {
namespace {

using Labels = std::map<std::string, std::string>;
using SteadyClock = std::chrono::steady_clock;
using ModelCode = std::pair<std::string, std::string>;  // {model label, code name}

constexpr char kDepsHint[] = "`make deps` installs it (Debian package prometheus)";
constexpr char kPrometheusBinary[] = "/usr/bin/prometheus";
constexpr auto kRpcTimeout = std::chrono::seconds(10);
constexpr auto kPrometheusReadyTimeout = std::chrono::seconds(30);
constexpr auto kPrometheusQueryTimeout = std::chrono::seconds(30);

// ---------------------------------------------------------------------------
// The text exposition format (0.0.4): "# TYPE name type" and
// "name{label="value",...} value [timestamp]" lines.

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Scrape {
  std::vector<Sample> samples;
  std::map<std::string, std::string> types;  // family name -> counter, gauge, ...
};

// Reads `{k="v",...}` starting at line[*i] == '{'; leaves *i after the '}'.
bool ParseLabels(const std::string& line, size_t* i, Labels* labels) {
  ++*i;
  while (*i < line.size() && line[*i] != '}') {
    const size_t eq = line.find('=', *i);
    if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return false;
    const std::string key = line.substr(*i, eq - *i);
    std::string value;
    for (*i = eq + 2; *i < line.size() && line[*i] != '"'; ++*i) {
      char c = line[*i];
      if (c == '\\' && *i + 1 < line.size()) {  // \\, \" and \n
        c = line[++*i];
        if (c == 'n') c = '\n';
      }
      value += c;
    }
    if (*i >= line.size()) return false;  // no closing quote
    ++*i;
    if (*i < line.size() && line[*i] == ',') ++*i;
    (*labels)[key] = value;
  }
  if (*i >= line.size()) return false;  // no closing brace
  ++*i;
  return true;
}

std::optional<Sample> ParseSampleLine(const std::string& line) {
  Sample sample;
  size_t i = line.find_first_of("{ ");
  if (i == std::string::npos || i == 0) return std::nullopt;
  sample.name = line.substr(0, i);
  if (line[i] == '{' && !ParseLabels(line, &i, &sample.labels)) return std::nullopt;
  std::istringstream rest(line.substr(i));
  std::string value;
  if (!(rest >> value)) return std::nullopt;
  char* end = nullptr;
  sample.value = std::strtod(value.c_str(), &end);  // also takes +Inf and NaN
  if (end == value.c_str() || *end != '\0') return std::nullopt;
  return sample;
}

Scrape ParseExposition(const std::string& text) {
  Scrape scrape;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, keyword, name, type;
      words >> hash >> keyword >> name >> type;
      if (keyword == "TYPE") scrape.types[name] = type;
      continue;
    }
    if (std::optional<Sample> sample = ParseSampleLine(line)) {
      scrape.samples.push_back(*std::move(sample));
    } else {
      ADD_FAILURE() << "malformed exposition line: " << line;
    }
  }
  return scrape;
}

std::vector<Sample> SamplesNamed(const Scrape& scrape, const std::string& name) {
  std::vector<Sample> found;
  for (const Sample& s : scrape.samples) {
    if (s.name == name) found.push_back(s);
  }
  return found;
}

// The value of the sample `name` whose labels are exactly `labels`.
std::optional<double> Value(const Scrape& scrape, const std::string& name,
                            const Labels& labels) {
  for (const Sample& s : scrape.samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

// `name`'s samples as model label -> value; fails on any other label.
std::map<std::string, double> PerModel(const Scrape& scrape, const std::string& name) {
  std::map<std::string, double> values;
  for (const Sample& s : SamplesNamed(scrape, name)) {
    EXPECT_EQ(s.labels.size(), 1u) << name << " has labels other than model";
    values[s.labels.count("model") ? s.labels.at("model") : "<none>"] = s.value;
  }
  return values;
}

// ---------------------------------------------------------------------------
// Loopback HTTP and child processes.

std::string UrlEncode(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A fresh directory under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/attnserve_e2e_metrics_XXXXXX";
    if (mkdtemp(pattern) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }  // "" when mkdtemp failed

 private:
  std::string path_;
};

// A /usr/bin/prometheus child scraping one target every second, listening on
// a free 127.0.0.1 port, with its config, TSDB and log in a temporary
// directory. The destructor stops it (SIGTERM; SIGKILL after 5 s) and reaps it.
class PrometheusProcess {
 public:
  PrometheusProcess() = default;
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;
  ~PrometheusProcess() { Stop(); }

  // Forks and execs Prometheus scraping 127.0.0.1:`target_port`. Returns ""
  // or what went wrong.
  std::string Start(int target_port) {
    if (dir_.path().empty()) return "mkdtemp failed";
    port_ = FreeLoopbackPort();
    if (port_ == 0) return "no free loopback port";
    const std::string config = dir_.path() + "/prometheus.yml";
    std::ofstream(config) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          << "  evaluation_interval: 1s\n"
                          << "scrape_configs:\n  - job_name: attnserve\n"
                          << "    static_configs:\n      - targets: ['127.0.0.1:" << target_port
                          << "']\n";
    // Everything the child needs is built before fork: after it, only
    // async-signal-safe calls (this process runs gRPC threads).
    const std::vector<std::string> args = {
        kPrometheusBinary,
        "--config.file=" + config,
        "--storage.tsdb.path=" + dir_.path() + "/data",
        "--storage.tsdb.retention.time=1h",
        "--web.listen-address=127.0.0.1:" + std::to_string(port_),
        "--log.level=warn"};
    std::vector<char*> argv;
    for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    const int log_fd = open(LogPath().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) return "cannot open " + LogPath() + " or /dev/null";
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // Dies with this process even if the destructor never runs.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(null_fd, 0);
      dup2(log_fd, 1);
      dup2(log_fd, 2);
      close_range(3, ~0U, 0);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(log_fd);
    close(null_fd);
    return pid_ > 0 ? "" : "fork failed";
  }

  // True once GET /-/ready answers 200, false when Prometheus exited or
  // `timeout` passed.
  bool WaitReady(SteadyClock::duration timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    while (SteadyClock::now() < deadline && Running()) {
      const std::optional<HttpResponse> r = HttpGet(port_, "/-/ready");
      if (r && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == 0) return true;
    pid_ = -1;  // exited and reaped
    return false;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    const auto deadline = SteadyClock::now() + std::chrono::seconds(5);
    int status = 0;
    for (;;) {
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno != EINTR)) break;
      if (SteadyClock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
  }

  int port() const { return port_; }
  std::string Log() const { return ReadFile(LogPath()); }

 private:
  std::string LogPath() const { return dir_.path() + "/prometheus.log"; }

  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// ---------------------------------------------------------------------------
// The traffic and the test fixture.

struct RequestSpec {
  std::string model;  // as sent
  uint32_t rows;      // L
  uint32_t cols;      // d_model, or a wrong width
  bool nan;           // poison one value
  grpc::StatusCode code;
  const char* code_name;    // the label DESIGN.md asks for
  const char* model_label;  // the model label the request is counted under
};

// mha_plain: d_model 32, no positional encoding. mha_sinusoidal_sep:
// d_model 64, max_length 64.
const std::vector<RequestSpec>& Traffic() {
  using grpc::StatusCode;
  static const std::vector<RequestSpec> kTraffic = [] {
    std::vector<RequestSpec> t;
    for (uint32_t rows : {1u, 2u, 3u, 5u, 8u, 13u, 21u}) {
      t.push_back({"mha_plain", rows, 32, false, StatusCode::OK, "OK", "mha_plain"});
    }
    for (uint32_t rows : {4u, 16u, 64u}) {
      t.push_back({"mha_sinusoidal_sep", rows, 64, false, StatusCode::OK, "OK",
                   "mha_sinusoidal_sep"});
    }
    t.push_back({"mha_plain", 4, 31, false, StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT",
                 "mha_plain"});  // shape mismatch
    t.push_back({"mha_plain", 4, 32, true, StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT",
                 "mha_plain"});  // non-finite value
    t.push_back({"no_such_model", 4, 32, false, StatusCode::NOT_FOUND, "NOT_FOUND", "_unknown"});
    t.push_back({"mha_sinusoidal_sep", 65, 64, false, StatusCode::OUT_OF_RANGE, "OUT_OF_RANGE",
                 "mha_sinusoidal_sep"});
    return t;
  }();
  return kTraffic;
}

class MetricsE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = server::AttnServer::Start(LoopbackOptions(SourcePath("tests/golden/data")));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    const absl::StatusOr<int> port = server_->metrics().StartHttp("127.0.0.1:0");
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
    stub_ = v1::Attention::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
    std::mt19937 rng(7);
    // One at a time: each reply arrives before the next request is sent, so
    // every batch holds exactly one request.
    for (const RequestSpec& spec : Traffic()) ASSERT_NO_FATAL_FAILURE(Send(spec, rng));
  }

  void TearDown() override {
    stub_.reset();
    server_.reset();  // drains
  }

  void Send(const RequestSpec& spec, std::mt19937& rng) {
    SCOPED_TRACE(spec.model + " L=" + std::to_string(spec.rows) + " expecting " +
                 spec.code_name);
    v1::AttendRequest request;
    request.set_model(spec.model);
    v1::Matrix* input = request.mutable_input();
    input->set_rows(spec.rows);
    input->set_cols(spec.cols);
    for (float v : RandomVector(rng, size_t{spec.rows} * spec.cols, 1.0f)) input->add_data(v);
    if (spec.nan) input->set_data(0, std::numeric_limits<float>::quiet_NaN());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::AttendResponse reply;
    const grpc::Status status = stub_->Attend(&context, request, &reply);
    ASSERT_EQ(status.error_code(), spec.code) << status.error_message();
    ++requests_[{spec.model_label, spec.code_name}];
    ++finished_[spec.model_label];
    if (status.ok()) {
      ASSERT_EQ(reply.stats().batch_size(), 1u);
      ASSERT_EQ(reply.stats().batch_tokens(), spec.rows);
      ++ok_[spec.model_label];
      tokens_[spec.model_label] += spec.rows;
    }
  }

  std::string ScrapeText() {
    const std::optional<HttpResponse> r = HttpGet(metrics_port_, "/metrics");
    EXPECT_TRUE(r.has_value()) << "no HTTP reply from the metrics port " << metrics_port_;
    if (!r) return "";
    EXPECT_EQ(r->status, 200) << r->body;
    return r->body;
  }

  Scrape ScrapeNow() { return ParseExposition(ScrapeText()); }

  std::unique_ptr<server::AttnServer> server_;
  int metrics_port_ = 0;
  std::unique_ptr<v1::Attention::Stub> stub_;
  // What the traffic should have produced.
  std::map<ModelCode, double> requests_;     // attnserve_requests_total
  std::map<std::string, double> finished_;   // finished requests per model label
  std::map<std::string, double> ok_;         // OK requests (= batches) per model
  std::map<std::string, double> tokens_;     // sum of L of the OK requests per model
};

TEST_F(MetricsE2ETest, FamiliesHaveDesignNamesAndTypes) {
  const Scrape scrape = ScrapeNow();
  const std::map<std::string, std::string> expected = {
      {"attnserve_requests_total", "counter"},
      {"attnserve_request_duration_seconds", "histogram"},
      {"attnserve_queue_duration_seconds", "histogram"},
      {"attnserve_compute_duration_seconds", "histogram"},
      {"attnserve_batch_size", "histogram"},
      {"attnserve_batch_tokens", "histogram"},
      {"attnserve_tokens_total", "counter"},
      {"attnserve_queue_depth", "gauge"},
      {"attnserve_inflight_requests", "gauge"},
      {"attnserve_model_info", "gauge"},
      {"process_cpu_seconds_total", "counter"},
      {"process_resident_memory_bytes", "gauge"},
      {"process_start_time_seconds", "gauge"}};
  for (const auto& [name, type] : expected) {
    EXPECT_EQ(scrape.types.count(name) ? scrape.types.at(name) : "<missing>", type) << name;
  }
}

TEST_F(MetricsE2ETest, RequestsTotalCountsEveryFinishedRequestByModelAndCode) {
  std::map<ModelCode, double> seen;
  for (const Sample& s : SamplesNamed(ScrapeNow(), "attnserve_requests_total")) {
    EXPECT_EQ(s.labels.size(), 2u);
    seen[{s.labels.count("model") ? s.labels.at("model") : "<none>",
          s.labels.count("code") ? s.labels.at("code") : "<none>"}] = s.value;
  }
  // Exactly these series: 7 + 2 for mha_plain, 3 + 1 for mha_sinusoidal_sep,
  // and the unknown model under "_unknown".
  const std::map<ModelCode, double> expected = {{{"mha_plain", "OK"}, 7},
                                                {{"mha_plain", "INVALID_ARGUMENT"}, 2},
                                                {{"mha_sinusoidal_sep", "OK"}, 3},
                                                {{"mha_sinusoidal_sep", "OUT_OF_RANGE"}, 1},
                                                {{"_unknown", "NOT_FOUND"}, 1}};
  EXPECT_EQ(requests_, expected);  // the traffic table agrees with the numbers above
  EXPECT_EQ(seen, expected);
}

TEST_F(MetricsE2ETest, DurationHistogramsCountRequestsAndBatches) {
  const Scrape scrape = ScrapeNow();
  // Receipt to reply: every finished request, failed ones included.
  EXPECT_EQ(PerModel(scrape, "attnserve_request_duration_seconds_count"), finished_);
  for (const auto& [model, count] : finished_) {
    SCOPED_TRACE(model);
    EXPECT_EQ(Value(scrape, "attnserve_request_duration_seconds_bucket",
                    {{"model", model}, {"le", "+Inf"}}),
              count);
    EXPECT_GT(
        Value(scrape, "attnserve_request_duration_seconds_sum", {{"model", model}}).value_or(-1),
        0);
  }
  // Queue wait per computed request; engine time per batch (one request each).
  EXPECT_EQ(PerModel(scrape, "attnserve_queue_duration_seconds_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_compute_duration_seconds_count"), ok_);
}

TEST_F(MetricsE2ETest, TokenAndBatchSeriesMatchTheReplies) {
  const Scrape scrape = ScrapeNow();
  EXPECT_EQ(tokens_, (std::map<std::string, double>{{"mha_plain", 53},
                                                    {"mha_sinusoidal_sep", 84}}));
  EXPECT_EQ(PerModel(scrape, "attnserve_tokens_total"), tokens_);
  // Every reply said batch_size 1 and batch_tokens L (checked in Send).
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_size_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_size_sum"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_tokens_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_tokens_sum"), tokens_);
  for (const auto& [model, batches] : ok_) {
    EXPECT_EQ(Value(scrape, "attnserve_batch_size_bucket", {{"model", model}, {"le", "1"}}),
              batches)
        << model;
  }
}

TEST_F(MetricsE2ETest, GaugesAreZeroAtRest) {
  const Scrape scrape = ScrapeNow();
  EXPECT_EQ(Value(scrape, "attnserve_inflight_requests", {}), 0);
  const std::map<std::string, double> depth = PerModel(scrape, "attnserve_queue_depth");
  for (const auto& [model, batches] : ok_) EXPECT_EQ(depth.count(model), 1u) << model;
  for (const auto& [model, value] : depth) EXPECT_EQ(value, 0) << model;
}

TEST_F(MetricsE2ETest, ModelInfoHasOneSeriesPerModelWithItsConfig) {
  std::vector<Labels> expected;
  for (const auto& dir : std::filesystem::directory_iterator(SourcePath("tests/golden/data"))) {
    const nlohmann::json c = nlohmann::json::parse(ReadFile((dir.path() / "config.json").string()));
    expected.push_back({{"model", dir.path().filename().string()},
                        {"precision", c.at("precision").get<std::string>()},
                        {"positional", c.at("positional").get<std::string>()},
                        {"relevance", c.at("relevance").get<std::string>()},
                        {"normalization", c.at("normalization").get<std::string>()},
                        {"projections", c.at("projections").get<bool>() ? "true" : "false"},
                        {"d_model", std::to_string(c.at("d_model").get<int>())},
                        {"num_heads", std::to_string(c.at("num_heads").get<int>())},
                        {"max_length", std::to_string(c.at("max_length").get<int>())}});
  }
  ASSERT_EQ(expected.size(), 4u);
  const Scrape scrape = ScrapeNow();
  const std::vector<Sample> info = SamplesNamed(scrape, "attnserve_model_info");
  EXPECT_EQ(info.size(), expected.size());
  for (const Labels& labels : expected) {
    EXPECT_EQ(Value(scrape, "attnserve_model_info", labels), 1) << labels.at("model");
  }
}

TEST_F(MetricsE2ETest, ProcessMetricsArePlausible) {
  // Enough CPU that the tick-granular (10 ms) counter is certainly positive.
  while (std::clock() < CLOCKS_PER_SEC / 20) {
  }
  const Scrape scrape = ScrapeNow();
  const double cpu_now = static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
  const double now = static_cast<double>(std::time(nullptr));

  const std::optional<double> cpu = Value(scrape, "process_cpu_seconds_total", {});
  ASSERT_TRUE(cpu.has_value());
  EXPECT_GT(*cpu, 0);
  EXPECT_LE(*cpu, cpu_now + 0.1);  // tick accounting may round up a little

  const std::optional<double> rss = Value(scrape, "process_resident_memory_bytes", {});
  ASSERT_TRUE(rss.has_value());
  EXPECT_GT(*rss, 1 << 20);
  EXPECT_LT(*rss, static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));

  const std::optional<double> start = Value(scrape, "process_start_time_seconds", {});
  ASSERT_TRUE(start.has_value());
  EXPECT_GT(*start, now - 3600);
  EXPECT_LE(*start, now + 2);  // boot time is whole seconds
}

TEST_F(MetricsE2ETest, ScrapePassesPromtoolLint) {
  const std::string text = ScrapeText();
  ASSERT_THAT(text, ::testing::HasSubstr("attnserve_requests_total"));
  ASSERT_TRUE(HavePromtool()) << kPromtoolHint;
  const CommandResult result = PromtoolCheckMetrics(text);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  const std::string& output = result.output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

// attnserve_requests_total as Prometheus returns it for an instant query:
// {model, code} -> value, keeping only series of job attnserve and
// instance `instance`. nullopt when the query did not succeed.
std::optional<std::map<ModelCode, double>> QueryRequestsTotal(int prometheus_port,
                                                              const std::string& instance,
                                                              std::string* raw) {
  const std::optional<HttpResponse> r = HttpGet(
      prometheus_port, "/api/v1/query?query=" + UrlEncode("attnserve_requests_total"));
  if (!r) return std::nullopt;
  *raw = r->body;
  const nlohmann::json json = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (r->status != 200 || json.is_discarded() || json.value("status", "") != "success") {
    return std::nullopt;
  }
  std::map<ModelCode, double> values;
  for (const nlohmann::json& series : json["data"]["result"]) {
    const nlohmann::json& m = series["metric"];
    if (m.value("job", "") != "attnserve" || m.value("instance", "") != instance) continue;
    values[{m.value("model", ""), m.value("code", "")}] =
        std::stod(series["value"][1].get<std::string>());
  }
  return values;
}

TEST_F(MetricsE2ETest, RealPrometheusScrapesRequestsTotal) {
  ASSERT_EQ(access(kPrometheusBinary, X_OK), 0)
      << kPrometheusBinary << " not found: " << kDepsHint;
  PrometheusProcess prometheus;
  const std::string error = prometheus.Start(metrics_port_);
  ASSERT_EQ(error, "");
  ASSERT_TRUE(prometheus.WaitReady(kPrometheusReadyTimeout))
      << "Prometheus on 127.0.0.1:" << prometheus.port() << " not ready; its log:\n"
      << prometheus.Log();

  const std::string instance = "127.0.0.1:" + std::to_string(metrics_port_);
  std::map<ModelCode, double> seen;
  std::string raw;
  const auto deadline = SteadyClock::now() + kPrometheusQueryTimeout;
  while (SteadyClock::now() < deadline && prometheus.Running()) {
    if (auto values = QueryRequestsTotal(prometheus.port(), instance, &raw)) seen = *values;
    if (seen == requests_) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(seen, requests_) << "last query response: " << raw << "\nPrometheus log:\n"
                             << prometheus.Log();
}

}  // namespace
}  // namespace attnserve::testing
