// Metrics: every Prometheus series of docs/DESIGN.md ("Metrics"), registered once,
// exposed over HTTP by prometheus-cpp (GET /metrics). Thread-safe: every
// method may be called from any thread (prometheus-cpp metrics are atomic).
#ifndef ATTNSERVE_SERVER_METRICS_H_
#define ATTNSERVE_SERVER_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace prometheus {
class Gauge;
class Registry;
class Exposer;
}  // namespace prometheus

namespace attnserve::server {

class Metrics {
 public:
  // Registers every family, and the process metrics (process_cpu_seconds_total,
  // process_resident_memory_bytes, process_start_time_seconds, read from
  // /proc/self at scrape time).
  Metrics();
  ~Metrics();

  // Serves GET /metrics on `address` ("0.0.0.0:9090", "127.0.0.1:0").
  // Returns the bound port. Errors (port in use) are UNAVAILABLE naming the
  // address. Call at most once.
  absl::StatusOr<int> StartHttp(const std::string& address);

  // attnserve_model_info{model, version, precision, positional, relevance,
  // normalization, projections, d_model, num_heads, max_length} = 1; the
  // series of an earlier version of `model` is removed.
  void AddModel(const std::string& model, const core::ModelConfig& config,
                const std::string& version);
  // Removes the attnserve_model_info series of `model` (it was unloaded).
  void RemoveModel(const std::string& model);

  // attnserve_model_load_failures_total{model} += 1.
  void LoadFailed(const std::string& model);

  // A finished request: attnserve_requests_total{model, code} += 1 and
  // attnserve_request_duration_seconds{model} observes `seconds` (receipt to
  // reply). `code` is the gRPC status code name ("OK", "INVALID_ARGUMENT").
  void RequestFinished(const std::string& model, const std::string& code, double seconds);

  // A request left the queue for a batch after `seconds` waiting.
  void QueueWait(const std::string& model, double seconds);

  // One engine run: compute time, requests and tokens of the batch
  // (attnserve_compute_duration_seconds, attnserve_batch_size,
  // attnserve_batch_tokens, attnserve_tokens_total).
  void BatchDone(const std::string& model, double compute_seconds, uint32_t batch_size,
                 uint32_t batch_tokens);

  // attnserve_queue_depth{model}.
  void SetQueueDepth(const std::string& model, double depth);

  // attnserve_engine_failures_total{model, code} += requests: requests the
  // engine failed (RESOURCE_EXHAUSTED: out of memory; INTERNAL: a oneDNN or
  // other engine error). They are also in attnserve_requests_total.
  void EngineFailures(const std::string& model, const std::string& code, double requests);

  // attnserve_inflight_requests: requests received and not yet answered.
  void InflightAdd(double delta);

  // attnserve_sessions_active and attnserve_session_cache_bytes (reserved).
  void SetSessions(double active, double cache_bytes);
  // attnserve_session_appends_total{model} += 1: a chunk answered.
  void SessionAppended(const std::string& model);
  // attnserve_sessions_ended_total{reason} += 1; reason is one of closed,
  // idle, cancelled, error, draining.
  void SessionEnded(const std::string& reason);

  // The registry, for tests that collect and inspect values directly.
  std::shared_ptr<prometheus::Registry> registry() const;

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
  std::unique_ptr<prometheus::Exposer> exposer_;

  std::mutex mu_;
  // The attnserve_model_info series of each model (one version at a time).
  std::map<std::string, prometheus::Gauge*> model_info_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_METRICS_H_
