#include "server/options.h"

#include <CLI/CLI.hpp>

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "server/version.h"

namespace attnserve::server {
namespace {

// Adds --NAME bound to `value`, also read from ATTNSERVE_<NAME>.
template <typename T>
CLI::Option* Flag(CLI::App& app, const std::string& name, T& value, const std::string& help) {
  std::string env = "ATTNSERVE_" + name;
  for (char& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return app.add_option("--" + name, value, help)->envname(env)->capture_default_str();
}

// Adds the switch --NAME (also --NAME=false, --no-NAME) bound to `value`,
// also read from ATTNSERVE_<NAME> ("true"/"false").
CLI::Option* BoolFlag(CLI::App& app, const std::string& name, bool& value,
                      const std::string& help) {
  std::string env = "ATTNSERVE_" + name;
  for (char& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return app.add_flag("--" + name + ",!--no-" + name, value, help)
      ->envname(env)
      ->capture_default_str();
}

// An integer flag and the range it must lie in (inclusive).
struct Bound {
  const char* flag;
  int64_t value, min, max;
};

// "--port must be in [0, 65535]; was 70000", or "... must be >= 1; ..." when
// the range has no upper end.
absl::Status Validate(const ServerOptions& o) {
  constexpr int64_t kNoMax = INT64_MAX;
  const BatcherOptions& b = o.batching;
  const Bound bounds[] = {
      {"port", o.port, 0, 65535},
      {"metrics-port", o.metrics_port, 0, 65535},
      {"max-batch-size", b.max_batch_size, 1, kNoMax},
      {"max-batch-tokens", b.max_batch_tokens, 1, kNoMax},
      {"max-queue-size", b.max_queue_size, 1, kNoMax},
      {"max-queue-delay-us", b.max_queue_delay_us, 0, kNoMax},
      {"max-queue-bytes", static_cast<int64_t>(std::min<uint64_t>(b.max_queue_bytes, kNoMax)), 1,
       kNoMax},
      {"threads", o.threads, 0, kNoMax},  // 0 = AvailableCpus()
      {"max-message-bytes", o.max_message_bytes, 4096, INT32_MAX},  // gRPC takes an int
      {"drain-timeout-ms", o.drain_timeout_ms, 0, kNoMax},
      {"stream-window", o.stream_window, 1, kNoMax},
      {"stream-window-bytes", o.stream_window_bytes, 1, kNoMax},
      {"max-sessions", o.max_sessions, 1, UINT32_MAX},
      {"session-cache-bytes", o.session_cache_bytes, 1, kNoMax},
      {"session-idle-timeout-s", o.session_idle_timeout_s, 0, int64_t{1} << 32},
      {"max-memory-bytes", o.max_memory_bytes, 0, kNoMax},  // 0 = DefaultMaxMemoryBytes()
      {"max-connection-age-ms", o.max_connection_age_ms, 0, kNoMax},
  };
  for (const Bound& bound : bounds) {
    if (bound.value >= bound.min && bound.value <= bound.max) continue;
    const std::string range = bound.max == kNoMax
                                  ? ">= " + std::to_string(bound.min)
                                  : "in [" + std::to_string(bound.min) + ", " +
                                        std::to_string(bound.max) + "]";
    return absl::InvalidArgumentError(std::string("--") + bound.flag + " must be " + range +
                                      "; was " + std::to_string(bound.value));
  }
  return absl::OkStatus();
}

// --tls-*, --auth-tokens, --authz-policy, --health-port, --reflection.
void AddSecurityFlags(CLI::App& app, SecurityOptions& s) {
  Flag(app, "tls-cert", s.tls_cert_path,
       "PEM server certificate chain; with --tls-key turns on TLS (re-read every --tls-refresh-s)");
  Flag(app, "tls-key", s.tls_key_path, "PEM private key of --tls-cert");
  Flag(app, "tls-client-ca", s.tls_client_ca_path,
       "PEM CA bundle: require client certificates signed by it (mTLS)");
  Flag(app, "tls-refresh-s", s.tls_refresh_s,
       "Seconds between checks of the certificate files for a renewed certificate");
  Flag(app, "auth-tokens", s.auth_tokens_path,
       "Bearer token file, lines 'PRINCIPAL SHA256_HEX' (attnctl token makes one); "
       "calls need 'authorization: Bearer TOKEN'");
  Flag(app, "authz-policy", s.authz_policy_path,
       "Authorization policy JSON (a subset of gRPC's): which principal may call which method");
  Flag(app, "health-port", s.health_port,
       "Plaintext port serving only grpc.health.v1.Health, for probes (0 = off)");
  BoolFlag(app, "reflection", s.reflection,
           "Serve gRPC server reflection (--reflection=false or --no-reflection turns it off)");
}

}  // namespace

int CpusFromCgroupV2(const std::string& cpu_max) {
  std::istringstream in(cpu_max);
  std::string quota;
  int64_t period = 0;
  if (!(in >> quota >> period) || quota == "max") return 0;
  try {
    return CpusFromCgroupV1(std::stoll(quota), period);
  } catch (const std::exception&) {
    return 0;
  }
}

int CpusFromCgroupV1(int64_t quota_us, int64_t period_us) {
  if (quota_us <= 0 || period_us <= 0) return 0;
  return static_cast<int>((quota_us + period_us - 1) / period_us);
}

int AvailableCpus() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  int quota = 0;
  if (std::ifstream v2("/sys/fs/cgroup/cpu.max"); v2) {
    std::string line;
    std::getline(v2, line);
    quota = CpusFromCgroupV2(line);
  } else {
    std::ifstream q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    int64_t quota_us = 0, period_us = 0;
    if (q >> quota_us && p >> period_us) quota = CpusFromCgroupV1(quota_us, period_us);
  }
  if (quota > 0 && quota < cpus) cpus = quota;
  return cpus > 0 ? cpus : 1;
}

int64_t MemoryLimitFromCgroup(const std::string& value) {
  // v1 reports "no limit" as the largest page-aligned int64 (~2^63); anything
  // beyond a petabyte is treated as no limit.
  constexpr int64_t kNoLimitAbove = int64_t{1} << 50;
  try {
    size_t used = 0;
    const int64_t bytes = std::stoll(value, &used);
    return bytes > 0 && bytes < kNoLimitAbove ? bytes : 0;
  } catch (const std::exception&) {
    return 0;  // "max", empty, or unreadable
  }
}

int64_t DefaultMaxMemoryBytes() {
  constexpr int64_t kWithoutLimit = int64_t{1} << 30;
  constexpr int64_t kFractionOfLimit = 4;  // the rest is models, replies, the engine
  auto first_line = [](const char* path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
  };
  std::string value = first_line("/sys/fs/cgroup/memory.max");  // cgroup v2
  if (value.empty()) value = first_line("/sys/fs/cgroup/memory/memory.limit_in_bytes");  // v1
  const int64_t limit = MemoryLimitFromCgroup(value);
  return limit > 0 ? limit / kFractionOfLimit : kWithoutLimit;
}

std::string DefaultModelRepository() { return ATTNSERVE_DEFAULT_MODEL_REPOSITORY; }

absl::Status ParseServerOptions(int argc, const char* const* argv, ServerOptions* options,
                                bool* exit_now, std::string* help) {
  ServerOptions& o = *options;
  o.model_repository = DefaultModelRepository();
  *exit_now = false;
  CLI::App app{"attnserve: multi-head self-attention over gRPC, batched, on oneDNN.\n"
               "Every flag can also be set as ATTNSERVE_<FLAG> (e.g. ATTNSERVE_PORT=50051);\n"
               "a flag on the command line wins.",
               "attnserve"};
  app.option_defaults()->always_capture_default();
  Flag(app, "host", o.host, "Address the gRPC server listens on");
  Flag(app, "port", o.port, "gRPC port (0 = any free port, logged at startup)");
  // --metrics-host is the old name of --metrics-address; both are accepted.
  if (const char* old = std::getenv("ATTNSERVE_METRICS_HOST"); old != nullptr) o.metrics_host = old;
  Flag(app, "metrics-address", o.metrics_host,
       "Address the /metrics endpoint listens on (e.g. 127.0.0.1 or the pod IP); "
       "--metrics-host is the old name");
  app.add_option("--metrics-host", o.metrics_host)->group("");  // hidden: the old name
  Flag(app, "metrics-port", o.metrics_port, "Prometheus metrics port, GET /metrics (0 = off)");
  Flag(app, "model-repository", o.model_repository,
       "Directory holding one directory per model (config.json + weights.safetensors)");
  Flag(app, "default-model", o.default_model,
       "Model served when a request names none (default: the only, or first by name)");
  std::string model_control = ModelControlName(o.model_control);
  Flag(app, "model-control", model_control,
       "none (the models found at startup, until exit), poll (re-read the repository every "
       "--repository-poll-s: load new and changed models, unload removed ones) or explicit "
       "(attnserve.v1.ModelRepository LoadModel/UnloadModel RPCs)");
  Flag(app, "repository-poll-s", o.repository_poll_s,
       "With --model-control poll: seconds between two reads of the model repository "
       "(0.1 to 86400)");
  Flag(app, "max-batch-size", o.batching.max_batch_size, "Most requests in one batch");
  Flag(app, "max-batch-tokens", o.batching.max_batch_tokens,
       "Most tokens (sum of sequence lengths) in one batch; a longer request runs alone");
  Flag(app, "max-queue-delay-us", o.batching.max_queue_delay_us,
       "Longest a request waits for companions before its batch runs, microseconds");
  Flag(app, "max-queue-size", o.batching.max_queue_size,
       "Most requests waiting per model; beyond it calls fail with RESOURCE_EXHAUSTED");
  Flag(app, "max-queue-bytes", o.batching.max_queue_bytes,
       "Most bytes the requests waiting or computing per model may hold (input, output and "
       "attention weights, 4 bytes a float); beyond it calls fail with RESOURCE_EXHAUSTED");
  Flag(app, "threads", o.threads,
       "Engine threads per batch (0 = the CPUs this process may use: its affinity mask, "
       "capped by its container's CPU limit)");
  Flag(app, "log-level", o.log_level, "trace, debug, info, warn, error, critical or off");
  Flag(app, "log-format", o.log_format, "text or json (one JSON object per line)");
  Flag(app, "max-message-bytes", o.max_message_bytes,
       "Largest request or reply; a reply that would be larger fails with RESOURCE_EXHAUSTED");
  Flag(app, "stream-window", o.stream_window,
       "Most messages of one AttendStream held at once (read and not yet answered, or "
       "answered and not yet written); reading pauses there until replies are written");
  Flag(app, "stream-window-bytes", o.stream_window_bytes,
       "Bytes of one AttendStream's messages in flight (input, output, attention weights) and "
       "unwritten replies at which reading pauses until replies are written (suffixes Ki, Mi, "
       "Gi); a single larger message is still read once the stream holds less")
      ->transform(CLI::AsSizeValue(false));
  Flag(app, "max-sessions", o.max_sessions,
       "Most streaming sessions (Attention.Session) open at once; an open beyond it fails "
       "with RESOURCE_EXHAUSTED");
  Flag(app, "session-cache-bytes", o.session_cache_bytes,
       "Bytes of key/value cache all open sessions may reserve (suffixes Ki, Mi, Gi); each "
       "reserves its largest cache (2 x rows kept x d_model x 4 bytes, 2 in bf16) when it "
       "opens, and an open that does not fit fails with RESOURCE_EXHAUSTED (nothing is evicted)")
      ->transform(CLI::AsSizeValue(false));
  Flag(app, "session-idle-timeout-s", o.session_idle_timeout_s,
       "Seconds a session may receive nothing (and compute nothing) before the server ends it "
       "with DEADLINE_EXCEEDED and frees its cache; 0 = never");
  Flag(app, "max-memory-bytes", o.max_memory_bytes,
       "gRPC's memory quota for message buffers and call state (suffixes Ki, Mi, Gi; 0 = a "
       "quarter of the container's memory limit, or 1 GiB without one); beyond it calls "
       "are refused with RESOURCE_EXHAUSTED")
      ->transform(CLI::AsSizeValue(false));
  Flag(app, "drain-timeout-ms", o.drain_timeout_ms,
       "On SIGTERM/SIGINT: time allowed to answer accepted requests before exiting");
  Flag(app, "max-connection-age-ms", o.max_connection_age_ms,
       "Close client connections gracefully after this age so they rebalance (0 = never)");
  AddSecurityFlags(app, o.security);
  app.set_version_flag("--version", VersionString(), "Print the version and git revision, exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    *exit_now = true;
    *help = app.help();
    return absl::OkStatus();
  } catch (const CLI::CallForVersion& e) {
    *exit_now = true;
    *help = std::string(e.what()) + "\n";
    return absl::OkStatus();
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  if (absl::Status s = ValidateSecurityOptions(o.security); !s.ok()) return s;
  auto control = ParseModelControl(model_control);
  if (!control.ok()) return control.status();
  o.model_control = *control;
  // Also rejects NaN.
  if (!(o.repository_poll_s >= 0.1 && o.repository_poll_s <= 86400)) {
    return absl::InvalidArgumentError("--repository-poll-s must be in [0.1, 86400]; was " +
                                      std::to_string(o.repository_poll_s));
  }
  if (o.security.health_port != 0 && o.security.health_port == o.port) {
    return absl::InvalidArgumentError("--health-port must differ from --port");
  }
  return Validate(o);
}

}  // namespace attnserve::server
