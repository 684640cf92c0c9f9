#include "bench/serve_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "client/load_generator.h"
#include "client/tensor_io.h"

extern char** environ;

namespace attnserve::bench {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

LevelResult RunLevel(const client::ClientOptions& client, int concurrency, double seconds,
                     const v1::AttendRequest& request) {
  return RunLevel(client, concurrency, seconds,
                  client::MakeLoadRequest(request, request.input().cols()));
}

LevelResult RunLevel(const client::ClientOptions& client, int concurrency, double seconds,
                     const client::LoadRequest& request) {
  client::LoadOptions load;
  load.concurrency = concurrency;
  load.duration_s = seconds;
  load.connections = std::min(concurrency, 4);
  LevelResult r;
  r.concurrency = concurrency;
  auto report = client::RunLoad(client, load, {request});
  if (!report.ok()) {
    std::fprintf(stderr, "%s\n", std::string(report.status().message()).c_str());
    r.errors = 1;
    return r;
  }
  r.requests_per_s = report->requests_per_s();
  r.p50_ms = report->p50_ms;
  r.p99_ms = report->p99_ms;
  r.mean_batch = report->mean_batch_size;
  r.mean_ms = report->mean_ms;
  r.mean_queue_ms = report->mean_queue_ms;
  r.mean_compute_ms = report->mean_compute_ms;
  r.errors = report->calls - report->ok;
  r.elapsed_s = report->elapsed_s;
  return r;
}

double OwnCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return seconds(u.ru_utime) + seconds(u.ru_stime);
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

std::string LoadAverage() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) return "unknown";
  char text[64];
  std::snprintf(text, sizeof text, "%.2f %.2f %.2f", load[0], load[1], load[2]);
  return text;
}

std::string ScrapeMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  const timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buffer[16384];
    for (ssize_t n; (n = recv(fd, buffer, sizeof buffer, 0)) > 0;) response.append(buffer, n);
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::optional<double> MetricSum(const std::string& exposition, const std::string& name) {
  std::optional<double> sum;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    // "name value" or "name{labels} value"; not name_suffix or a comment.
    if (line.rfind(name, 0) != 0 || line.size() <= name.size() ||
        (line[name.size()] != ' ' && line[name.size()] != '{')) {
      continue;
    }
    const size_t value_at = line[name.size()] == '{' ? line.rfind('}') + 1 : name.size();
    sum = sum.value_or(0) + std::strtod(line.c_str() + value_at, nullptr);
  }
  return sum;
}

std::vector<int> ParseIntList(const std::string& s) {
  std::vector<int> out;
  for (size_t pos = 0; pos < s.size();) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoi(s.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

v1::AttendRequest MakeRequest(uint32_t length, uint32_t d_model) {
  std::mt19937 rng(1);
  return client::RandomRequest(rng, length, d_model);
}

ServerProcess::ServerProcess(const std::string& binary,
                             const std::vector<std::string>& extra_flags,
                             client::ClientOptions client, const std::string& repository)
    : ServerProcess(binary, Options{extra_flags, std::move(client), repository, false}) {}

ServerProcess::ServerProcess(const std::string& binary, Options options)
    : client_(std::move(options.client)) {
  port_ = FreePort();
  client_.target = target();
  if (options.metrics) metrics_port_ = FreePort();
  std::vector<std::string> args = {binary, "--host", "127.0.0.1", "--port",
                                   std::to_string(port_), "--metrics-port",
                                   std::to_string(metrics_port_), "--model-repository",
                                   options.repository.empty()
                                       ? std::string(ATTNSERVE_SOURCE_DIR) + "/models"
                                       : options.repository,
                                   "--log-level", "warn"};
  if (options.metrics) args.insert(args.end(), {"--metrics-address", "127.0.0.1"});
  args.insert(args.end(), options.extra_flags.begin(), options.extra_flags.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  ready_ = pid_ > 0 && WaitReady();
}

ServerProcess::~ServerProcess() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 300; ++i) {  // up to 15 s, then SIGKILL
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

double ServerProcess::CpuSeconds() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));  // after "pid (comm) "
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);
  }
  return ticks / sysconf(_SC_CLK_TCK);
}

bool ServerProcess::WaitReady() {
  client::ClientOptions probe = client_;
  probe.deadline_ms = 100;
  probe.max_retries = 0;
  auto client = client::AttentionClient::Create(probe);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", std::string(client.status().message()).c_str());
    return false;
  }
  for (int i = 0; i < 300; ++i) {  // 30 s
    v1::ListModelsResponse reply;
    if ((*client)->ListModels(&reply).ok()) return true;
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

}  // namespace attnserve::bench
