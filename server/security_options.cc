#include "server/security_options.h"

#include <string>

namespace attnserve::server {

absl::Status ValidateSecurityOptions(const SecurityOptions& o) {
  if (o.tls_cert_path.empty() != o.tls_key_path.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both (TLS) or neither (plaintext)");
  }
  if (!o.tls_client_ca_path.empty() && o.tls_cert_path.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with client certificates)");
  }
  if (o.tls_refresh_s < 1 || o.tls_refresh_s > 86400) {
    return absl::InvalidArgumentError("--tls-refresh-s must be in [1, 86400]; was " +
                                      std::to_string(o.tls_refresh_s));
  }
  if (o.health_port < 0 || o.health_port > 65535) {
    return absl::InvalidArgumentError("--health-port must be in [0, 65535]; was " +
                                      std::to_string(o.health_port));
  }
  if (o.reload_interval_ms < 1) {
    return absl::InvalidArgumentError("reload_interval_ms must be positive; was " +
                                      std::to_string(o.reload_interval_ms));
  }
  return absl::OkStatus();
}

}  // namespace attnserve::server
