// attnserve: multi-head self-attention over gRPC. Flags: attnserve --help.
// SIGTERM/SIGINT drain gracefully (see AttnServer::Drain) and exit 0; exit 1
// right at the deadline (--drain-timeout-ms, plus at most 1 s) when
// accepted requests were still unanswered, replies still undelivered (a
// client not reading) or a batch was still computing then; exit 2 on a bad
// flag or a startup failure (bad model repository, port in use).

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/onednn_engine.h"
#include "server/allocator.h"
#include "server/logging.h"
#include "server/openmp_defaults.h"
#include "server/options.h"
#include "server/server.h"
#include "server/transport_security.h"
#include "server/version.h"

namespace {

// Blocks the shutdown signals in this thread and, by inheritance, in every
// thread started later; main() then receives them with sigwait.
sigset_t BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

void LogStartup(const attnserve::server::AttnServer& server,
                const attnserve::server::ServerOptions& o) {
  using attnserve::core::ToString;
  spdlog::info("{} starting: oneDNN ISA {}, {} engine thread(s) per batch, {}, OpenMP wait {}",
               attnserve::server::VersionString(), attnserve::core::OneDnnEngine::IsaName(),
               o.threads > 0 ? std::to_string(o.threads)
                             : absl::StrCat(attnserve::server::AvailableCpus(), " (all available)"),
               attnserve::server::AllocatorName(), attnserve::server::OpenMpWaitDescription());
  const auto models = server.registry().models();  // a snapshot, held for the loop
  for (const auto& m : *models) {
    const auto& c = m->config();
    spdlog::info("model {}{} version {}: d_model={} heads={} max_length={} positional={} relevance={} "
                 "normalization={} projections={} precision={} compute={} from {}",
                 m->name(), m->name() == server.registry().default_name() ? " (default)" : "",
                 m->version(), c.d_model, c.num_heads, c.max_length, std::string(ToString(c.positional)),
                 std::string(ToString(c.relevance)), std::string(ToString(c.normalization)),
                 c.projections, std::string(ToString(c.precision)), m->compute_path(),
                 m->model->path);
  }
  spdlog::info("model control: {}{}", attnserve::server::ModelControlName(o.model_control),
               o.model_control == attnserve::server::ModelControl::kPoll
                   ? absl::StrCat(" (repository re-read every ", o.repository_poll_s, " s)")
                   : "");
  spdlog::info("batching: max_batch_size={} max_batch_tokens={} max_queue_delay_us={} "
               "max_queue_size={}", o.batching.max_batch_size, o.batching.max_batch_tokens,
               o.batching.max_queue_delay_us, o.batching.max_queue_size);
  spdlog::info("security: {}", attnserve::server::DescribeSecurity(o.security));
  if (o.security.tls()) {  // what is presented; never the key
    auto cert = attnserve::server::DescribeCertificate(o.security.tls_cert_path);
    spdlog::info("TLS certificate {}: {}", o.security.tls_cert_path,
                 cert.ok() ? *cert : std::string(cert.status().message()));
  }
  if (server.health_port() != 0) {
    spdlog::info("serving grpc.health.v1.Health only, plaintext, on {}:{} (for probes)", o.host,
                 server.health_port());
  }
  spdlog::info("serving gRPC on {}:{}, metrics on {}", o.host, server.port(),
               server.metrics_port() ? o.metrics_host + ":" + std::to_string(server.metrics_port()) +
                                           "/metrics"
                                     : std::string("(off)"));
}

}  // namespace

int main(int argc, char** argv) {
  attnserve::server::ApplyOpenMpDefaults(argv);  // may run this binary again, once
  const sigset_t signals = BlockShutdownSignals();
  attnserve::server::ServerOptions options;
  bool exit_now = false;
  std::string help;
  absl::Status parsed =
      attnserve::server::ParseServerOptions(argc, argv, &options, &exit_now, &help);
  if (exit_now) {
    std::fputs(help.c_str(), stdout);
    return 0;
  }
  if (parsed.ok()) parsed = attnserve::server::SetUpLogging(options.log_format, options.log_level);
  if (!parsed.ok()) {
    std::fprintf(stderr, "attnserve: %s\nRun 'attnserve --help' for the flags.\n",
                 std::string(parsed.message()).c_str());
    return 2;
  }
  auto server = attnserve::server::AttnServer::Start(options);
  if (!server.ok()) {
    spdlog::critical("startup failed: {}", std::string(server.status().message()));
    return 2;
  }
  LogStartup(**server, options);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("received {}; draining (health NOT_SERVING, new calls UNAVAILABLE, up to {} ms)",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT", options.drain_timeout_ms);
  const bool clean = (*server)->Drain();
  if (!clean) {
    // Missed the deadline: a batch (and the calls waiting on it) may still be
    // running. Exit now rather than wait for it in the destructors.
    spdlog::error("drain missed its {} ms deadline; exiting 1", options.drain_timeout_ms);
    // Flush, not spdlog::shutdown(): the stuck batch thread may still log,
    // and shutdown() frees the loggers and sinks under it (ThreadSanitizer
    // caught that use after free).
    spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& logger) { logger->flush(); });
    std::fflush(nullptr);
    std::_Exit(1);
  }
  spdlog::info("drained cleanly; exiting");
  return 0;
}
