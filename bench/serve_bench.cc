// serve_bench: how much of the engine's offline throughput the server keeps
// under load. Starts the attnserve binary on 127.0.0.1 (a free port) on the
// demo model, drives it closed-loop over gRPC at each concurrency with L=128
// requests, and prints requests/s, p50/p99 latency, the mean batch size from
// the replies' Stats and the server process's CPU time per request; then, in
// the same run, the engine's offline throughput for the same batch
// composition (batches of that mean size, back to back, in this process) and
// two ratios: serving / offline (end to end, the load generator sharing the
// machine's cores) and server efficiency (the engine's CPU per request over
// the server's: what the server keeps of the engine when the load comes from
// elsewhere). Repeated with --max-batch-size 1 to show what batching gains.
// Bounded: each level runs for --seconds and stops by itself.
//
//   build/bench/serve_bench [--seconds 5] [--concurrency 1,16,64] [--length 128]
//                           [--max-queue-delay-us US] [--server-binary PATH]

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "attnserve/v1/attention.grpc.pb.h"
#include "client/load_generator.h"
#include "client/tensor_io.h"
#include "core/onednn_engine.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = attnserve::v1;

struct LevelResult {
  int concurrency = 0;
  double requests_per_s = 0, p50_ms = 0, p99_ms = 0, mean_batch = 0;
  uint64_t errors = 0;
  double elapsed_s = 0;
};

// CPU seconds (user + system) this process has used so far: the load
// generator's own cost, all of its threads.
double OwnCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return seconds(u.ru_utime) + seconds(u.ru_stime);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// The benchmark's request: `length` random rows (seed 1).
v1::AttendRequest MakeRequest(uint32_t length, uint32_t d_model) {
  std::mt19937 rng(1);
  return attnserve::client::RandomRequest(rng, length, d_model);
}

// `concurrency` calls always in flight over 4 connections, for `seconds`:
// the client library's load generator (attnctl bench), which sends
// pre-serialized requests and reads only each reply's Stats and output size.
LevelResult RunLevel(const std::string& target, int concurrency, double seconds,
                     const v1::AttendRequest& request) {
  attnserve::client::ClientOptions client;
  client.target = target;
  attnserve::client::LoadOptions load;
  load.concurrency = concurrency;
  load.duration_s = seconds;
  load.connections = std::min(concurrency, 4);
  LevelResult r;
  r.concurrency = concurrency;
  auto report = attnserve::client::RunLoad(
      client, load, {attnserve::client::MakeLoadRequest(request, request.input().cols())});
  if (!report.ok()) {
    std::fprintf(stderr, "%s\n", std::string(report.status().message()).c_str());
    r.errors = 1;
    return r;
  }
  r.requests_per_s = report->requests_per_s();
  r.p50_ms = report->p50_ms;
  r.p99_ms = report->p99_ms;
  r.mean_batch = report->mean_batch_size;
  r.errors = report->calls - report->ok;
  r.elapsed_s = report->elapsed_s;
  return r;
}

// The attnserve binary as a child process on 127.0.0.1 and a free port, so
// its CPU time can be read apart from the load generator's.
class ServerProcess {
 public:
  ServerProcess(const std::string& binary, const std::vector<std::string>& extra_flags) {
    port_ = FreePort();
    std::vector<std::string> args = {binary, "--host", "127.0.0.1", "--port",
                                     std::to_string(port_), "--metrics-port", "0",
                                     "--model-repository", std::string(ATTNSERVE_SOURCE_DIR) + "/models",
                                     "--log-level", "warn"};
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
    ready_ = pid_ > 0 && WaitReady();
  }
  ~ServerProcess() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {  // up to 15 s, then SIGKILL
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  bool ok() const { return ready_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

  // utime + stime of the server process, from /proc/PID/stat.
  double CpuSeconds() const {
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

 private:
  static int FreePort() {
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
  // Polls ListModels (bounded: 30 s) until the server answers.
  bool WaitReady() {
    auto stub = v1::Attention::NewStub(grpc::CreateChannel(target(), grpc::InsecureChannelCredentials()));
    for (int i = 0; i < 300; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
      v1::ListModelsResponse reply;
      if (stub->ListModels(&ctx, {}, &reply).ok()) return true;
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  pid_t pid_ = -1;
  int port_ = 0;
  bool ready_ = false;
};

// The engine alone on batches of `batch` sequences of `length`: sequences/s.
double OfflineThroughput(attnserve::core::Engine& engine, int batch, uint32_t length,
                         double seconds) {
  const uint32_t d = engine.model().config.d_model;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> data(size_t(batch) * length * d);
  for (float& x : data) x = u(rng);
  std::vector<attnserve::core::SequenceInput> seqs(batch);
  for (int b = 0; b < batch; ++b) {
    seqs[b].data = std::span<const float>(data).subspan(size_t(b) * length * d, length * d);
    seqs[b].length = length;
  }
  std::vector<double> per_batch;
  const auto stop = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < stop || per_batch.size() < 5) {
    const auto t0 = Clock::now();
    auto out = engine.Run(seqs);
    per_batch.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (!out.ok()) return 0;
  }
  return batch / Percentile(per_batch, 0.5);  // median batch time
}

// --target HOST:PORT: only the load, against a server running elsewhere
// (e.g. the attnserve binary, so its CPU time can be read from /proc).
int LoadExternal(const std::string& target, const std::vector<int>& levels, double seconds,
                 uint32_t length) {
  auto stub = v1::Attention::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse models;
  grpc::Status s = stub->ListModels(&ctx, {}, &models);
  uint32_t d_model = 0;
  for (const auto& m : models.models()) {
    if (m.is_default()) d_model = m.d_model();
  }
  if (!s.ok() || d_model == 0) {
    std::fprintf(stderr, "cannot list models at %s: %s\n", target.c_str(), s.error_message().c_str());
    return 1;
  }
  const v1::AttendRequest request = MakeRequest(length, d_model);
  std::printf("| target | concurrency | requests/s | p50 ms | p99 ms | mean batch | errors |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int c : levels) {
    LevelResult r = RunLevel(target, c, seconds, request);
    std::printf("| %s | %d | %.1f | %.2f | %.2f | %.1f | %llu |\n", target.c_str(), c,
                r.requests_per_s, r.p50_ms, r.p99_ms, r.mean_batch,
                static_cast<unsigned long long>(r.errors));
    std::fflush(stdout);
  }
  return 0;
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoi(s.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5;
  uint32_t length = 128;
  std::vector<int> levels = {1, 16, 64};
  int64_t delay_us = -1;  // -1: the server's default
  std::string target;     // set: load an external server instead (no offline figures)
  std::string binary = ATTNSERVE_BINARY;  // the server to start
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") seconds = std::stod(argv[i + 1]);
    else if (flag == "--length") length = std::stoul(argv[i + 1]);
    else if (flag == "--concurrency") levels = ParseList(argv[i + 1]);
    else if (flag == "--max-queue-delay-us") delay_us = std::stoll(argv[i + 1]);
    else if (flag == "--target") target = argv[i + 1];
    else if (flag == "--server-binary") binary = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: serve_bench [--seconds S] [--length L] [--concurrency 1,16,64] [--max-queue-delay-us US] [--target HOST:PORT] [--server-binary PATH]\n");
      return 2;
    }
  }
  if (!target.empty()) return LoadExternal(target, levels, seconds, length);
  auto model = attnserve::core::LoadModel(std::string(ATTNSERVE_SOURCE_DIR) + "/models/demo");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  auto engine = attnserve::core::OneDnnEngine::Create(
      std::make_shared<const attnserve::core::Model>(*std::move(model)));
  if (!engine.ok()) return 1;
  const v1::AttendRequest request = MakeRequest(length, (*engine)->model().config.d_model);
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("| server | concurrency | requests/s | p50 ms | p99 ms | mean batch | server CPU ms/req "
              "| load generator CPU ms/req | offline req/s | serving / offline | server efficiency "
              "| errors |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t max_batch : {64u, 1u}) {
    std::vector<std::string> flags = {"--max-batch-size", std::to_string(max_batch)};
    if (delay_us >= 0) {
      flags.insert(flags.end(), {"--max-queue-delay-us", std::to_string(delay_us)});
    }
    ServerProcess server(binary, flags);
    if (!server.ok()) {
      std::fprintf(stderr, "cannot start %s\n", binary.c_str());
      return 1;
    }
    for (int c : levels) {
      const double cpu0 = server.CpuSeconds(), own_cpu0 = OwnCpuSeconds();
      LevelResult r = RunLevel(server.target(), c, seconds, request);
      const double answered = std::max(1.0, r.requests_per_s * r.elapsed_s);
      const double cpu_ms_per_request = 1e3 * (server.CpuSeconds() - cpu0) / answered;
      const double load_cpu_ms_per_request = 1e3 * (OwnCpuSeconds() - own_cpu0) / answered;
      const int batch = std::max(1, static_cast<int>(r.mean_batch + 0.5));
      const double offline = OfflineThroughput(**engine, batch, length, std::min(seconds, 2.0));
      // The engine alone keeps every core busy: its CPU per request is cores / offline rate.
      const double offline_cpu_ms = 1e3 * cores / offline;
      std::printf("| %s | %d | %.1f | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f | %.0f%% | %.0f%% | %llu |\n",
                  max_batch == 1 ? "--max-batch-size 1" : "--max-batch-size 64", c,
                  r.requests_per_s, r.p50_ms, r.p99_ms, r.mean_batch, cpu_ms_per_request,
                  load_cpu_ms_per_request, offline,
                  100 * r.requests_per_s / offline, 100 * offline_cpu_ms / cpu_ms_per_request,
                  static_cast<unsigned long long>(r.errors));
      std::fflush(stdout);
    }
  }
  return 0;
}
