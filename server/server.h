// AttnServer: a running attnserve — the model registry, the gRPC server
// (Attention service, KServe v2 inference service, health, reflection) and the metrics endpoint — built
// from ServerOptions. Used by main() and by in-process tests. Thread-safe.
#ifndef ATTNSERVE_SERVER_SERVER_H_
#define ATTNSERVE_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <string>

#include <grpcpp/server.h>

namespace grpc {
class CallbackGenericService;
}

#include "absl/status/statusor.h"
#include "server/access_control.h"
#include "server/clock.h"
#include "server/file_watcher.h"
#include "server/metrics.h"
#include "server/model_lifecycle.h"
#include "server/model_registry.h"
#include "server/options.h"
#include "server/repository_service.h"
#include "server/service.h"
#include "server/v2_service.h"

namespace attnserve::server {

class AttnServer {
 public:
  // Loads every model, starts the batchers, the gRPC server and (unless
  // metrics_port == 0) the metrics endpoint; health reports SERVING for ""
  // and for each model name. Errors name what failed (model file, port).
  static absl::StatusOr<std::unique_ptr<AttnServer>> Start(const ServerOptions& options);

  ~AttnServer();  // Drain()s if still running.

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }  // 0: --health-port off
  const ModelRegistry& registry() const { return *registry_; }
  // Model loads and unloads while serving (--model-control); tests call
  // lifecycle().PollNow() instead of waiting for the poll thread.
  ModelLifecycle& lifecycle() { return *lifecycle_; }
  Metrics& metrics() { return *metrics_; }

  // Graceful drain (SIGTERM): health turns NOT_SERVING, new calls get
  // UNAVAILABLE, every accepted request is answered and its reply delivered
  // (to a slow reader too), the batch threads end,
  // then the gRPC server shuts down (idle streams and connections get 500 ms,
  // then are cancelled). Every phase is bounded by one deadline,
  // drain_timeout_ms from the call: Drain returns by then plus 1 s at the
  // latest, even when an engine run is stuck. Returns true when everything
  // accepted was answered and every batch thread ended in time; false
  // otherwise (main() then exits 1 without waiting for the stuck work; the
  // destructor waits for it). Idempotent.
  bool Drain();

 private:
  AttnServer() = default;
  absl::Status StartHealthServer();
  // Health of `service` on the main server and the health-only server.
  void SetServing(const std::string& service, bool serving);
  // A model's health after a lifecycle change (ignored once draining).
  void OnModelHealth(const std::string& model, ModelHealth health);
  // Times are clock_ microseconds.
  void LingerWhileRefusing(int64_t drain_start_us, int64_t deadline_us);
  // Shuts the gRPC server down on shutdown_thread_ (see the .cc); true when
  // it stopped in time. `left`: time to the drain deadline.
  bool StopTransport(std::chrono::steady_clock::duration left);

  ServerOptions options_;
  RealClock clock_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<AttentionService> service_;
  std::unique_ptr<InferenceService> v2_service_;  // KServe v2, same port
  // Declared after registry_: destroyed (poll thread joined) before it.
  std::unique_ptr<ModelLifecycle> lifecycle_;
  std::unique_ptr<RepositoryService> repository_service_;
  std::atomic<bool> health_frozen_{false};  // Drain began: health is NOT_SERVING for good
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int metrics_port_ = 0;
  // --health-port: a plaintext server with only grpc.health.v1.Health.
  std::unique_ptr<grpc::CallbackGenericService> health_generic_;
  std::unique_ptr<grpc::Server> health_server_;
  int health_port_ = 0;
  std::unique_ptr<FileWatcher> cert_log_watcher_;  // logs certificate renewals
  // Also held by the main port's credentials, which gRPC may release after
  // this server is gone: its watchers are stopped in the destructor, before
  // the clock and metrics they use.
  std::shared_ptr<AccessControl> access_;

  std::mutex drain_mu_;
  bool drained_ = false;  // guarded by drain_mu_
  bool drain_result_ = true;  // guarded by drain_mu_

  std::thread shutdown_thread_;  // started by Drain, joined by the destructor
  std::mutex transport_mu_;
  std::condition_variable transport_cv_;
  bool transport_stopped_ = false;  // guarded by transport_mu_
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SERVER_H_
