// What every attnctl subcommand shares: its exit codes, how it reports a bad
// command line or a server's error, and how it finds a served model.
// Stateless functions; thread-safe.
#ifndef ATTNSERVE_CLIENT_ATTNCTL_UTIL_H_
#define ATTNSERVE_CLIENT_ATTNCTL_UTIL_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "attnserve/v1/attention.pb.h"
#include "client/attention_client.h"

namespace attnserve::client {

// 0 success; 1 the server answered with an error (or a check failed);
// 2 bad command line or input file.
inline constexpr int kExitOk = 0, kExitServer = 1, kExitUsage = 2;

// Prints "attnctl: MESSAGE" on stderr; returns kExitUsage.
int UsageError(const std::string& message);
// Prints "error: CODE: message" on stderr; returns kExitServer.
int ServerError(const grpc::Status& status);
int ServerError(const absl::Status& status);

// The served model `name` ("" = the default), from ListModels: the RPC's
// error, or NOT_FOUND when no served model matches.
grpc::Status FindModel(AttentionClient& client, const std::string& name, v1::ModelInfo* model);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_ATTNCTL_UTIL_H_
