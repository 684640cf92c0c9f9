// ServerOptions: every flag of the attnserve binary (docs/DESIGN.md, "Serving"),
// each also readable from ATTNSERVE_<FLAG> (upper case, dashes as
// underscores); a command-line flag wins over its environment variable. A
// plain value type.
#ifndef ATTNSERVE_SERVER_OPTIONS_H_
#define ATTNSERVE_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "server/batcher.h"
#include "server/model_lifecycle.h"
#include "server/model_registry.h"
#include "server/security_options.h"

namespace attnserve::server {

struct ServerOptions {
  std::string host = "0.0.0.0";  // address the gRPC server listens on
  int port = 50051;              // gRPC port; 0 = any free port
  int metrics_port = 9090;       // Prometheus /metrics port; 0 = off
  // Address the /metrics endpoint listens on (--metrics-address, also
  // accepted as --metrics-host / ATTNSERVE_METRICS_HOST).
  std::string metrics_host = "0.0.0.0";
  // Directory of model directories (NAME/config.json + weights.safetensors).
  std::string model_repository;
  std::string default_model;  // "" = the only model, or the first by name
  // --model-control: none (the models of startup until exit), poll (the
  // repository is re-read every repository_poll_s) or explicit (the
  // attnserve.v1.ModelRepository RPCs). See model_lifecycle.h.
  ModelControl model_control = ModelControl::kNone;
  double repository_poll_s = 5.0;  // --repository-poll-s, in [0.1, 86400]
  BatcherOptions batching;    // --max-batch-size, --max-batch-tokens, ...
  int threads = 0;            // engine threads per batch; 0 = AvailableCpus()
  std::string log_level = "info";
  std::string log_format = "text";  // text | json
  // Largest request or reply message. A request whose reply would be larger
  // fails with RESOURCE_EXHAUSTED before it is computed.
  int64_t max_message_bytes = int64_t{64} << 20;
  // Most messages of one AttendStream the server holds at once (read and not
  // yet answered, or answered and not yet written); reading pauses there.
  uint32_t stream_window = 8;
  // Bytes of one AttendStream's held messages (request, output and attention
  // weights while computed) and unwritten replies at which reading pauses
  // until replies are written. A message is never refused for its size: one
  // larger than this is read once the stream holds less.
  int64_t stream_window_bytes = int64_t{64} << 20;
  // Streaming sessions (Attention.Session): most open at once, total bytes
  // of key/value cache they may reserve (each its largest, at open), and
  // seconds one may receive nothing before it is ended (0 = never).
  int64_t max_sessions = 1024;
  int64_t session_cache_bytes = int64_t{1} << 30;
  int64_t session_idle_timeout_s = 300;
  // gRPC's memory quota (ResourceQuota), bytes: the transport's buffers of
  // incoming and outgoing messages and call state. 0 = the default:
  // DefaultMaxMemoryBytes().
  int64_t max_memory_bytes = 0;
  int64_t drain_timeout_ms = 10000;  // SIGTERM: time allowed to answer accepted requests
  // Connections are closed (gracefully) after this age so clients re-resolve
  // and rebalance after scale-out; 0 = never.
  int64_t max_connection_age_ms = 0;
  // Makes each model's engine; empty = the oneDNN engine. Not a flag: the
  // seam through which in-process tests serve a failing or slow engine.
  EngineFactory engine_factory;
  // The clock of sessions' idle times; null = real time. Not a flag: the
  // seam through which tests end idle sessions on a FakeClock.
  Clock* session_clock = nullptr;
  // TLS, mTLS, tokens, authorization policy, health port, reflection.
  SecurityOptions security;
};

// The model repository used when --model-repository is not given: the
// models/ directory of the source tree this binary was built from.
std::string DefaultModelRepository();

// The CPUs this process can use, what --threads 0 means: the CPUs of its
// affinity mask, capped by the CPU quota of its cgroup (a container's CPU
// limit: cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us at
// /sys/fs/cgroup), rounded up; at least 1.
int AvailableCpus();
// A CPU quota as whole CPUs, rounded up (0: no quota). From cgroup v2's
// cpu.max ("200000 100000" -> 2, "max 100000" -> 0), or v1's quota and
// period in microseconds (quota -1 -> 0).
int CpusFromCgroupV2(const std::string& cpu_max);
int CpusFromCgroupV1(int64_t quota_us, int64_t period_us);

// The default of --max-memory-bytes: a quarter of the container's memory
// limit when one is set (cgroup v2 memory.max, or v1
// memory/memory.limit_in_bytes at /sys/fs/cgroup), otherwise 1 GiB.
int64_t DefaultMaxMemoryBytes();
// A cgroup memory limit in bytes (0: none): v2's memory.max ("max" -> 0), or
// v1's limit_in_bytes (the kernel's "unlimited", a huge value, -> 0).
int64_t MemoryLimitFromCgroup(const std::string& value);

// Parses argv and the environment. Returns OK with *options filled, or an
// error: INVALID_ARGUMENT with the message to print for a bad flag or value.
// --help, --version: *exit_now is set and *help receives the text to print.
absl::Status ParseServerOptions(int argc, const char* const* argv, ServerOptions* options,
                                bool* exit_now, std::string* help);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_OPTIONS_H_
