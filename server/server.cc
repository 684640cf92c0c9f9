#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

absl::StatusOr<std::unique_ptr<AttnServer>> AttnServer::Start(const ServerOptions& options) {
  auto s = std::unique_ptr<AttnServer>(new AttnServer());
  s->options_ = options;
  s->metrics_ = std::make_unique<Metrics>();
  auto registry = ModelRegistry::Load(options.model_repository, options.default_model,
                                      options.batching,
                                      options.threads > 0 ? options.threads : AvailableCpus(),
                                      &s->clock_,
                                      s->metrics_.get());
  if (!registry.ok()) return registry.status();
  s->registry_ = *std::move(registry);
  ServiceOptions service_options;
  service_options.max_message_bytes = options.max_message_bytes;
  service_options.stream_window = options.stream_window;
  s->service_ = std::make_unique<AttentionService>(s->registry_.get(), s->metrics_.get(),
                                                   &s->clock_, service_options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
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
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  for (const auto& m : s->registry_->models()) health->SetServingStatus(m->name(), true);

  if (options.metrics_port != 0) {
    auto port = s->metrics_->StartHttp(absl::StrCat(options.metrics_host, ":", options.metrics_port));
    if (!port.ok()) return port.status();
    s->metrics_port_ = *port;
  }
  return s;
}

// gRPC cancels (CANCELLED, which clients do not retry) calls that arrive once
// Shutdown has begun. So while callers keep arriving, stay up refusing them
// with UNAVAILABLE; stop after kQuiet without a refusal (counted from the start
// of the drain), or after kMaxLinger, and never past the drain deadline.
void AttnServer::LingerWhileRefusing(int64_t drain_start_us,
                                     std::chrono::steady_clock::time_point deadline) {
  constexpr auto kQuiet = std::chrono::milliseconds(200);
  constexpr auto kMaxLinger = std::chrono::seconds(2);
  constexpr auto kPoll = std::chrono::milliseconds(20);
  const auto stop = std::min(deadline, std::chrono::steady_clock::now() + kMaxLinger);
  while (std::chrono::steady_clock::now() < stop) {
    // Calls already on the wire when draining began arrive a little later:
    // the quiet period counts from the start of the drain at the earliest.
    const int64_t last = std::max(service_->last_refusal_us(), drain_start_us);
    const int64_t quiet_us = std::chrono::duration_cast<std::chrono::microseconds>(kQuiet).count();
    if (clock_.NowMicros() - last >= quiet_us) return;
    std::this_thread::sleep_for(kPoll);
  }
}

bool AttnServer::Drain() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (drained_) return drain_result_;
  drained_ = true;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(options_.drain_timeout_ms);
  // 1. Tell load balancers and probes first, 2. refuse new work and flush the
  // queues, 3. answer what was accepted, 4. keep refusing (UNAVAILABLE, which
  // clients retry elsewhere) until callers have noticed, 5. stop the transport.
  const int64_t drain_start_us = clock_.NowMicros();
  server_->GetHealthCheckService()->SetServingStatus(false);
  service_->StartDraining();
  registry_->BeginDrain();
  drain_result_ = service_->WaitIdle(deadline);
  if (!drain_result_) {
    spdlog::error("drain: requests still unanswered after {} ms; shutting down anyway",
                  options_.drain_timeout_ms);
  }
  LingerWhileRefusing(drain_start_us, deadline);
  registry_->Drain();
  // Everything accepted is answered; what remains are idle streams, which a
  // short grace period lets finish writing before they are cancelled.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  server_->Wait();
  return drain_result_;
}

AttnServer::~AttnServer() {
  if (server_ != nullptr) Drain();
}

}  // namespace attnserve::server
