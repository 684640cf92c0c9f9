// The credentials of attnserve's main gRPC port: plaintext, TLS or mTLS with
// certificate files that gRPC re-reads every --tls-refresh-s (a renewed
// certificate is used by new connections without a restart), and
// AccessControl attached as gRPC's auth metadata processor, so a refused call
// is answered by gRPC's security filter and never reaches a handler. The
// functions are thread-safe.
#ifndef ATTNSERVE_SERVER_TRANSPORT_SECURITY_H_
#define ATTNSERVE_SERVER_TRANSPORT_SECURITY_H_

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/access_control.h"
#include "server/clock.h"
#include "server/file_watcher.h"
#include "server/security_options.h"

namespace attnserve::server {

// Startup check of --tls-cert/--tls-key/--tls-client-ca (gRPC's file watcher
// would only log and fail every handshake): each file readable PEM, the key
// matching the certificate. INVALID_ARGUMENT naming the flag and file.
absl::Status CheckTlsFiles(const SecurityOptions& options);

// "subject CN=localhost,O=..., serial 1001, expires 2026-11-27 15:00:00 UTC"
// for the first certificate of a PEM file (no key material).
absl::StatusOr<std::string> DescribeCertificate(const std::string& path);

// Logs "TLS certificate FILE changed: subject ..., serial ..., expires ..."
// whenever --tls-cert is rewritten (checked every tls_refresh_s, like gRPC's
// own watcher, which logs nothing when a renewal succeeds). Null without TLS.
std::unique_ptr<FileWatcher> WatchCertificateForLog(const SecurityOptions& options, Clock* clock);

// Credentials for ServerBuilder::AddListeningPort. `access` may be null (no
// tokens, no policy); otherwise it checks every call and is kept alive as
// long as gRPC needs it.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const SecurityOptions& options, std::shared_ptr<AccessControl> access);

// One line for the startup log, never a secret: "mTLS (client CA
// /etc/ca.pem, refresh 60 s), bearer tokens on, authorization policy on".
std::string DescribeSecurity(const SecurityOptions& options);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_TRANSPORT_SECURITY_H_
