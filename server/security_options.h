// SecurityOptions: the transport security and access control flags of
// attnserve (README "Security"). A plain value type; ValidateSecurityOptions
// checks it once at startup.
#ifndef ATTNSERVE_SERVER_SECURITY_OPTIONS_H_
#define ATTNSERVE_SERVER_SECURITY_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace attnserve::server {

struct SecurityOptions {
  // PEM server certificate chain and private key (--tls-cert, --tls-key).
  // Both empty: plaintext. Watched: rewritten files are used by new
  // connections within tls_refresh_s.
  std::string tls_cert_path;
  std::string tls_key_path;
  // PEM CA bundle (--tls-client-ca). Set: mTLS, every client must present a
  // certificate that chains to it. Watched like the cert.
  std::string tls_client_ca_path;
  // How often the certificate files are re-read, seconds (--tls-refresh-s).
  int64_t tls_refresh_s = 60;
  // Bearer token file (--auth-tokens): lines "PRINCIPAL SHA256_HEX". Set:
  // every call except health and reflection needs a known token.
  std::string auth_tokens_path;
  // Authorization policy (--authz-policy), a subset of gRPC's
  // authorization-policy JSON.
  std::string authz_policy_path;
  // How often the token and policy files are checked for changes,
  // milliseconds (not a flag).
  int64_t reload_interval_ms = 1000;
  // Plaintext listener that serves only grpc.health.v1.Health, for probes
  // (--health-port); 0 = off.
  int health_port = 0;
  // Serve gRPC server reflection on the main port (--reflection).
  bool reflection = true;

  bool tls() const { return !tls_cert_path.empty(); }
  bool mtls() const { return !tls_client_ca_path.empty(); }
};

// INVALID_ARGUMENT naming the flag: --tls-cert without --tls-key (or the
// reverse), --tls-client-ca without --tls-cert, --tls-refresh-s < 1,
// --health-port out of [0, 65535].
absl::Status ValidateSecurityOptions(const SecurityOptions& options);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SECURITY_OPTIONS_H_
