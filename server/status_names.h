// The canonical upper-case names of gRPC status codes ("OK",
// "INVALID_ARGUMENT", ...), as used in metric labels and logs.
#ifndef ATTNSERVE_SERVER_STATUS_NAMES_H_
#define ATTNSERVE_SERVER_STATUS_NAMES_H_

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace attnserve::server {

// gRPC and absl share the numbering and the names; a code outside the
// canonical set is "UNKNOWN" (as gRPC itself treats it).
inline std::string StatusCodeName(grpc::StatusCode code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_STATUS_NAMES_H_
