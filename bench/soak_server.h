// SoakServer: the attnserve binary as a child process for bench/soak, with
// its output captured (the port it bound is read from its "serving gRPC on
// HOST:PORT" log line) and its resident memory and open file descriptors
// read from /proc/PID. Thread-safe.
#ifndef ATTNSERVE_BENCH_SOAK_SERVER_H_
#define ATTNSERVE_BENCH_SOAK_SERVER_H_

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace attnserve::bench {

class SoakServer {
 public:
  struct Usage {
    uint64_t rss_bytes = 0;  // VmRSS of /proc/PID/status
    int open_fds = 0;        // entries of /proc/PID/fd
  };

  // Starts argv (argv[0] the binary, which must log at info level or lower)
  // and waits (at most 60 s) until it logs the port it serves on. Errors
  // carry the server's output.
  static absl::StatusOr<std::unique_ptr<SoakServer>> Start(const std::vector<std::string>& argv);
  // SIGKILLs the server if it still runs.
  ~SoakServer();

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  bool Running();
  Usage ReadUsage() const;
  // SIGTERM, then the wait status once it exits (SIGKILL after 60 s).
  int Stop();
  // The last 64 KiB of its output.
  std::string Output() const;
  static std::string DescribeExit(int wait_status);

 private:
  SoakServer() = default;
  void ReadOutput(int fd);

  pid_t pid_ = -1;
  int port_ = 0;
  std::thread reader_;  // started by Start, joined by the destructor

  mutable std::mutex mu_;
  std::condition_variable cv_;  // output grew or ended
  std::string output_;          // guarded by mu_
  bool output_done_ = false;    // guarded by mu_
  bool reaped_ = false;         // guarded by mu_
  int wait_status_ = 0;         // guarded by mu_
};

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_SOAK_SERVER_H_
