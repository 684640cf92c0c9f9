// End-to-end test of the Prometheus metrics (DESIGN.md, "Metrics") through a
// real Prometheus server. The MetricsE2ETest fixture (tests/metrics_e2e_util.h)
// has an in-process AttnServer on 127.0.0.1 answer a known mix of OK and
// failed requests; then Debian's Prometheus, scraping attnserve every second,
// returns the same attnserve_requests_total through its HTTP query API. What
// a single scrape shows is in e2e_metrics_test.cc.
//
// Network only on 127.0.0.1; every wait is bounded. The Prometheus child is
// stopped by an RAII guard, and by PR_SET_PDEATHSIG should this process die.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "tests/http_util.h"
#include "tests/metrics_e2e_util.h"

namespace attnserve::testing::metrics_e2e {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr char kDepsHint[] = "`make deps` installs it (Debian package prometheus)";
constexpr char kPrometheusBinary[] = "/usr/bin/prometheus";
constexpr auto kPrometheusReadyTimeout = std::chrono::seconds(30);
constexpr auto kPrometheusQueryTimeout = std::chrono::seconds(30);

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
// 127.0.0.1 port 0 (the port it got is read back from /proc), with its config, TSDB and log in a temporary
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
        "--web.listen-address=127.0.0.1:0",  // the port is read back (WaitReady)
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
      if (port_ == 0) {  // bound to port 0: learn which port it got
        const std::vector<int> ports = ListeningLoopbackPorts(pid_);
        if (!ports.empty()) port_ = ports.front();
      }
      const std::optional<HttpResponse> r =
          port_ == 0 ? std::nullopt : HttpGet(port_, "/-/ready");
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
}  // namespace attnserve::testing::metrics_e2e
