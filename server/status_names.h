// The canonical upper-case names of gRPC status codes ("OK",
// "INVALID_ARGUMENT", ...), as used in metric labels and logs.
#ifndef ATTNSERVE_SERVER_STATUS_NAMES_H_
#define ATTNSERVE_SERVER_STATUS_NAMES_H_

#include <string>

#include <grpcpp/support/status.h>

namespace attnserve::server {

inline std::string StatusCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",        "UNKNOWN",           "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",   "ALREADY_EXISTS",    "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",        "UNAVAILABLE",       "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return (i >= 0 && i < 17) ? kNames[i] : "UNKNOWN";
}

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_STATUS_NAMES_H_
