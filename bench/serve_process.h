// Pieces shared by serve_bench's and session_bench's tables: the attnserve
// binary as a child process on 127.0.0.1 (so its CPU time can be read apart
// from the load generator's) and its /metrics, and one closed-loop load level
// against it through the client library's load generator. Not thread-safe:
// one benchmark thread uses them.
#ifndef ATTNSERVE_BENCH_SERVE_PROCESS_H_
#define ATTNSERVE_BENCH_SERVE_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attnserve/v1/attention.pb.h"
#include "client/attention_client.h"
#include "client/load_generator.h"

namespace attnserve::bench {

struct LevelResult {
  int concurrency = 0;
  double requests_per_s = 0, p50_ms = 0, p99_ms = 0, mean_batch = 0;
  // Means over the OK calls: latency, and the replies' Stats.queue_us and
  // Stats.compute_us (0 when the server sends no Stats).
  double mean_ms = 0, mean_queue_ms = 0, mean_compute_ms = 0;
  uint64_t errors = 0;
  double elapsed_s = 0;
};

// `concurrency` calls always in flight over min(concurrency, 4) connections
// for `seconds`, to `client.target` with its TLS options and token: the
// client library's load generator (attnctl bench), which sends
// pre-serialized requests and reads only each reply's Stats and output size.
LevelResult RunLevel(const client::ClientOptions& client, int concurrency, double seconds,
                     const v1::AttendRequest& request);
// The same with a prepared load request (e.g. a KServe v2 ModelInfer).
LevelResult RunLevel(const client::ClientOptions& client, int concurrency, double seconds,
                     const client::LoadRequest& request);

// CPU seconds (user + system) this process has used so far: the load
// generator's own cost, all of its threads.
double OwnCpuSeconds();

// The CPU's model name (/proc/cpuinfo), for the reports' headers.
std::string CpuModel();
// The 1, 5 and 15 minute load averages, e.g. "0.52 0.61 0.40".
std::string LoadAverage();

// The body of GET /metrics from 127.0.0.1:`port` (HTTP/1.0, each socket
// operation bounded by 5 s); empty when nothing answers.
std::string ScrapeMetrics(int port);
// The sum over every series of metric `name` (any labels) in the Prometheus
// text `exposition`; nullopt when it has none.
std::optional<double> MetricSum(const std::string& exposition, const std::string& name);

// "1,16,64" -> {1, 16, 64} (a benchmark's list of levels). Throws
// std::invalid_argument on a part that is not a number.
std::vector<int> ParseIntList(const std::string& s);

// The p-quantile (0..1) of `v`, nearest rank; 0 when empty.
double Percentile(std::vector<double> v, double p);

// The benchmark's request: `length` random rows of `d_model` (seed 1).
v1::AttendRequest MakeRequest(uint32_t length, uint32_t d_model);

// The attnserve binary on 127.0.0.1 and a free port, a model repository
// (the demo model's by default), metrics off unless asked for, `extra_flags`
// added. Ready once ListModels answers through `client` (its target is
// filled in; TLS options and token as the server needs them), at most 30 s.
// The destructor sends SIGTERM and reaps it (SIGKILL after 15 s).
class ServerProcess {
 public:
  struct Options {
    std::vector<std::string> extra_flags;  // added after the flags above
    client::ClientOptions client;          // how to reach it; the target is filled in
    // The model repository to serve; empty = the source tree's models/ (the
    // demo model).
    std::string repository;
    // Serve GET /metrics on 127.0.0.1 at a free port (metrics_port()); off:
    // --metrics-port 0.
    bool metrics = false;
  };
  ServerProcess(const std::string& binary, Options options);
  ServerProcess(const std::string& binary, const std::vector<std::string>& extra_flags,
                client::ClientOptions client = {}, const std::string& repository = "");
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool ok() const { return ready_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  // The options to reach it: those given, with the target set.
  const client::ClientOptions& client() const { return client_; }
  // utime + stime of the server process so far, from /proc/PID/stat.
  double CpuSeconds() const;
  // The server's process id; -1 when it did not start or exited early.
  pid_t pid() const { return pid_; }
  // Its /metrics port on 127.0.0.1; 0 when metrics are off.
  int metrics_port() const { return metrics_port_; }

 private:
  bool WaitReady();

  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  bool ready_ = false;
  client::ClientOptions client_;
};

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_SERVE_PROCESS_H_
