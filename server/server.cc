#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/transport_security.h"

namespace attnserve::server {
namespace {

// Server reflection on one server only (not gRPC's global plugin, which
// would also put it on the health-only port): removes the plugin if a
// global registration added it, then adds it back when `on`.
class ReflectionOption final : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool on) : on_(on) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const auto& p) { return p->name() == "proto_server_reflection"; });
    if (on_) plugins->push_back(std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>());
  }

 private:
  const bool on_;
};

}  // namespace

// The plaintext listener of --health-port: grpc.health.v1.Health only (its
// statuses mirror the main server's), everything else UNIMPLEMENTED.
absl::Status AttnServer::StartHealthServer() {
  health_generic_ = std::make_unique<grpc::CallbackGenericService>();  // answers UNIMPLEMENTED
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options_.host, ":", options_.security.health_port);
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(health_generic_.get());
  builder.SetOption(std::make_unique<ReflectionOption>(false));
  health_server_ = builder.BuildAndStart();
  if (health_server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--health-port: cannot listen on ", address,
                                               " (address in use or not local?)"));
  }
  health_port_ = port;
  return absl::OkStatus();
}

void AttnServer::SetServing(const std::string& service, bool serving) {
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    if (s != nullptr) s->GetHealthCheckService()->SetServingStatus(service, serving);
  }
}

// gRPC's health service cannot forget a name: an unloaded model stays
// NOT_SERVING (a Watch then still sees the change).
void AttnServer::OnModelHealth(const std::string& model, ModelHealth health) {
  if (health_frozen_.load()) return;
  SetServing(model, health == ModelHealth::kServing);
}

absl::StatusOr<std::unique_ptr<AttnServer>> AttnServer::Start(const ServerOptions& options) {
  auto s = std::unique_ptr<AttnServer>(new AttnServer());
  s->options_ = options;
  // spdlog's registry is built on first use; build it here, before this
  // server starts threads that log (an embedding program may not have set up
  // logging), so that it is published by their creation.
  spdlog::default_logger_raw();
  s->metrics_ = std::make_unique<Metrics>();
  auto registry = ModelRegistry::Load(
      {.repository = options.model_repository,
       .default_model = options.default_model,
       .batching = options.batching,
       .threads = options.threads > 0 ? options.threads : AvailableCpus(),
       .engine_factory = options.engine_factory,
       .retire_timeout_ms = options.drain_timeout_ms},
      &s->clock_, s->metrics_.get());
  if (!registry.ok()) return registry.status();
  s->registry_ = *std::move(registry);
  ServiceOptions service_options;
  service_options.max_message_bytes = options.max_message_bytes;
  service_options.stream_window = options.stream_window;
  service_options.stream_window_bytes = options.stream_window_bytes;
  service_options.sessions.max_sessions = static_cast<uint32_t>(options.max_sessions);
  service_options.sessions.cache_bytes = static_cast<uint64_t>(options.session_cache_bytes);
  service_options.sessions.idle_timeout_us = options.session_idle_timeout_s * 1'000'000;
  service_options.session_clock = options.session_clock;
  s->service_ = std::make_unique<AttentionService>(s->registry_.get(), s->metrics_.get(),
                                                   &s->clock_, service_options);
  s->v2_service_ = std::make_unique<InferenceService>(
      s->registry_.get(), s->metrics_.get(), &s->clock_,
      InferenceServiceOptions{.max_message_bytes = options.max_message_bytes});
  AttnServer* const self = s.get();
  s->lifecycle_ = std::make_unique<ModelLifecycle>(
      s->registry_.get(), s->metrics_.get(),
      ModelLifecycleOptions{
          .control = options.model_control,
          .poll_interval_ms = static_cast<int64_t>(options.repository_poll_s * 1000)},
      [self](const std::string& model, ModelHealth health) { self->OnModelHealth(model, health); });
  s->repository_service_ =
      std::make_unique<RepositoryService>(s->lifecycle_.get(), s->registry_.get());

  if (absl::Status tls = CheckTlsFiles(options.security); !tls.ok()) return tls;
  s->cert_log_watcher_ = WatchCertificateForLog(options.security, &s->clock_);
  auto access = AccessControl::Create(options.security, s->metrics_.get(), &s->clock_);
  if (!access.ok()) return access.status();
  s->access_ = *std::move(access);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, MakeServerCredentials(options.security, s->access_),
                           &s->port_);
  builder.SetOption(std::make_unique<ReflectionOption>(options.security.reflection));
  builder.RegisterService(s->service_.get());
  builder.RegisterService(s->v2_service_.get());
  builder.RegisterService(s->repository_service_.get());
  // Bounds what gRPC buffers (incoming and outgoing messages, call state):
  // under pressure it shrinks flow-control windows and cancels streams with
  // RESOURCE_EXHAUSTED rather than growing without bound.
  grpc::ResourceQuota quota("attnserve");
  quota.Resize(static_cast<size_t>(options.max_memory_bytes > 0 ? options.max_memory_bytes
                                                                : DefaultMaxMemoryBytes()));
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (options.max_connection_age_ms > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(options.max_connection_age_ms));
    // Calls running when the age is reached get this long to finish.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               static_cast<int>(options.drain_timeout_ms));
  }
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address,
                                               " (address in use or not local?)"));
  }
  if (options.security.health_port != 0) {
    if (absl::Status h = s->StartHealthServer(); !h.ok()) return h;
  }
  s->SetServing("", true);
  const auto models = s->registry_->models();  // a snapshot, held for the loop
  for (const auto& m : *models) s->SetServing(m->name(), true);
  s->lifecycle_->Start();  // health and the registry are ready for changes

  if (options.metrics_port != 0) {
    auto port = s->metrics_->StartHttp(absl::StrCat(options.metrics_host, ":", options.metrics_port));
    if (!port.ok()) return port.status();
    s->metrics_port_ = *port;
  }
  return s;
}

// gRPC cancels (CANCELLED, which clients do not retry) calls that arrive once
// Shutdown has begun. So while callers keep arriving, stay up refusing them
// with UNAVAILABLE; stop after kQuietUs without a refusal (counted from the start
// of the drain), or after kMaxLinger, and never past the drain deadline.
void AttnServer::LingerWhileRefusing(int64_t drain_start_us, int64_t deadline_us) {
  constexpr int64_t kQuietUs = 200'000;
  constexpr int64_t kMaxLingerUs = 2'000'000;
  constexpr auto kPoll = std::chrono::milliseconds(20);
  const int64_t stop_us = std::min(deadline_us, clock_.NowMicros() + kMaxLingerUs);
  while (clock_.NowMicros() < stop_us) {
    // Calls already on the wire when draining began arrive a little later:
    // the quiet period counts from the start of the drain at the earliest.
    const int64_t last = std::max(
        {service_->last_refusal_us(), v2_service_->last_refusal_us(), drain_start_us});
    if (clock_.NowMicros() - last >= kQuietUs) return;
    std::this_thread::sleep_for(kPoll);
  }
}

bool AttnServer::Drain() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (drained_) return drain_result_;
  drained_ = true;
  const int64_t drain_start_us = clock_.NowMicros();
  const int64_t deadline_us = drain_start_us + options_.drain_timeout_ms * 1000;
  // 1. Tell load balancers and probes first, 2. refuse new work and flush the
  // queues, 3. answer what was accepted and deliver the replies (waiting for
  // a slow reader's flow control too), 4. keep refusing (UNAVAILABLE, which
  // clients retry elsewhere) until callers have noticed, 5. end the batch
  // threads, 6. stop the transport. Every phase ends by the drain deadline.
  lifecycle_->Stop();  // no load or unload starts from now on
  health_frozen_.store(true);
  server_->GetHealthCheckService()->SetServingStatus(false);
  if (health_server_ != nullptr) health_server_->GetHealthCheckService()->SetServingStatus(false);
  service_->StartDraining();
  v2_service_->StartDraining();
  registry_->StartDraining();
  const bool answered = service_->WaitIdle(deadline_us) && v2_service_->WaitIdle(deadline_us);
  if (!answered) {
    spdlog::error("drain: requests still unanswered or replies undelivered after {} ms; "
                  "shutting down anyway", options_.drain_timeout_ms);
  }
  LingerWhileRefusing(drain_start_us, deadline_us);
  const bool batchers_done = registry_->Drain(deadline_us);
  if (!batchers_done) {
    spdlog::error("drain: a batch is still computing at the {} ms deadline", options_.drain_timeout_ms);
  }
  // A slow transport stop alone (everything answered, no batch left) is
  // logged but not a failed drain: nothing accepted is lost.
  StopTransport(std::chrono::microseconds(deadline_us - clock_.NowMicros()));
  drain_result_ = answered && batchers_done;
  if (health_server_ != nullptr) {  // last: probes see NOT_SERVING until the end
    // Probes make short unary calls; this bounds one that is mid-flight.
    constexpr auto kHealthShutdownGrace = std::chrono::milliseconds(100);
    health_server_->Shutdown(std::chrono::system_clock::now() + kHealthShutdownGrace);
    health_server_->Wait();
  }
  return drain_result_;
}

// grpc::Server::Shutdown waits for open calls and for client connections to
// close until its deadline, then cancels the calls and drops the connections.
// By now every accepted request has been answered (or the drain deadline has
// passed), so what is left are idle streams and pooled client connections,
// which would otherwise hold the drain for its whole timeout: they get
// kIdleGrace (never past the drain deadline). Shutdown then also waits for
// every call to be finished, which a call held by a stuck engine run never
// is; so it runs on shutdown_thread_, and Drain waits for it only kCancelGrace
// longer (cancelled calls and dropped connections take a moment to end; the
// machine may be loaded). True when the transport stopped in that time.
bool AttnServer::StopTransport(std::chrono::steady_clock::duration left) {
  constexpr auto kIdleGrace = std::chrono::milliseconds(500);
  constexpr auto kCancelGrace = std::chrono::milliseconds(1000);
  const auto grace = std::clamp<std::chrono::steady_clock::duration>(
      left, std::chrono::steady_clock::duration::zero(), kIdleGrace);
  const auto shutdown_deadline = std::chrono::system_clock::now() + grace;
  shutdown_thread_ = std::thread([this, shutdown_deadline] {
    server_->Shutdown(shutdown_deadline);
    server_->Wait();
    std::lock_guard<std::mutex> lock(transport_mu_);
    transport_stopped_ = true;
    transport_cv_.notify_all();
  });
  std::unique_lock<std::mutex> lock(transport_mu_);
  if (transport_cv_.wait_for(lock, grace + kCancelGrace, [this] { return transport_stopped_; })) {
    return true;
  }
  spdlog::warn("drain: gRPC calls or connections still open {} ms after they were cancelled",
               std::chrono::duration_cast<std::chrono::milliseconds>(kCancelGrace).count());
  return false;
}

AttnServer::~AttnServer() {
  if (server_ != nullptr) Drain();
  // A drain that missed its deadline left these for a stuck engine run to
  // release: wait for it here (main() exits without destroying the server).
  if (shutdown_thread_.joinable()) shutdown_thread_.join();
  if (access_ != nullptr) access_->StopWatching();  // before clock_ and metrics_ go
  lifecycle_.reset();  // joins the poll thread, which may be retiring a model
  registry_.reset();
}
}  // namespace attnserve::server
