#include "client/attnctl_util.h"

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace attnserve::client {

int UsageError(const std::string& message) {
  std::fprintf(stderr, "attnctl: %s\n", message.c_str());
  return kExitUsage;
}

int ServerError(const grpc::Status& status) {
  return ServerError(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                  status.error_message()));
}

int ServerError(const absl::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return kExitServer;
}

grpc::Status FindModel(AttentionClient& client, const std::string& name, v1::ModelInfo* model) {
  v1::ListModelsResponse models;
  if (grpc::Status s = client.ListModels(&models); !s.ok()) return s;
  for (const v1::ModelInfo& m : models.models()) {
    if (name.empty() ? m.is_default() : m.name() == name) {
      *model = m;
      return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("model '", name,
                                                                "' is not served at ",
                                                                client.options().target));
}

}  // namespace attnserve::client
