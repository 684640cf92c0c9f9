// RepositoryService: the attnserve.v1.ModelRepository gRPC service (load,
// update, unload and list the models of the model repository while serving;
// see model_repository.proto and ModelLifecycle). Synchronous handlers: a
// load blocks its call (seconds, for a large model) on one of gRPC's sync
// server threads, never a callback thread. Thread-safe. Authorization is the
// transport's (AccessControl checks every method path, as for Attention).
#ifndef ATTNSERVE_SERVER_REPOSITORY_SERVICE_H_
#define ATTNSERVE_SERVER_REPOSITORY_SERVICE_H_

#include <string>

#include "attnserve/v1/model_repository.grpc.pb.h"
#include "server/model_lifecycle.h"
#include "server/model_registry.h"

namespace attnserve::server {

// The ModelInfo of `model` (ListModels, LoadModel).
void FillModelInfo(const ServedModel& model, bool is_default, v1::ModelInfo* info);

class RepositoryService final : public v1::ModelRepository::Service {
 public:
  // `lifecycle` and `registry` must outlive the service.
  RepositoryService(ModelLifecycle* lifecycle, const ModelRegistry* registry)
      : lifecycle_(lifecycle), registry_(registry) {}

  grpc::Status LoadModel(grpc::ServerContext* context, const v1::LoadModelRequest* request,
                         v1::LoadModelResponse* response) override;
  grpc::Status UnloadModel(grpc::ServerContext* context, const v1::UnloadModelRequest* request,
                           v1::UnloadModelResponse* response) override;
  grpc::Status ListRepository(grpc::ServerContext* context,
                              const v1::ListRepositoryRequest* request,
                              v1::ListRepositoryResponse* response) override;

 private:
  ModelLifecycle* const lifecycle_;
  const ModelRegistry* const registry_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_REPOSITORY_SERVICE_H_
