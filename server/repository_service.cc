#include "server/repository_service.h"

#include <spdlog/spdlog.h>

#include "core/model_config.h"

namespace attnserve::server {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace

void FillModelInfo(const ServedModel& model, bool is_default, v1::ModelInfo* info) {
  const core::ModelConfig& c = model.config();
  info->set_name(model.name());
  info->set_d_model(c.d_model);
  info->set_num_heads(c.num_heads);
  info->set_max_length(c.max_length);
  info->set_positional(std::string(core::ToString(c.positional)));
  info->set_relevance(std::string(core::ToString(c.relevance)));
  info->set_normalization(std::string(core::ToString(c.normalization)));
  info->set_projections(c.projections);
  info->set_precision(std::string(core::ToString(c.precision)));
  info->set_is_default(is_default);
  info->set_version(model.version());
}

grpc::Status RepositoryService::LoadModel(grpc::ServerContext*,
                                          const v1::LoadModelRequest* request,
                                          v1::LoadModelResponse* response) {
  auto outcome = lifecycle_->Load(request->name());
  if (!outcome.ok()) return ToGrpc(outcome.status());
  FillModelInfo(*outcome->model, outcome->model->name() == registry_->default_name(),
                response->mutable_model());
  response->set_changed(outcome->changed);
  return grpc::Status::OK;
}

grpc::Status RepositoryService::UnloadModel(grpc::ServerContext*,
                                            const v1::UnloadModelRequest* request,
                                            v1::UnloadModelResponse*) {
  return ToGrpc(lifecycle_->Unload(request->name()));
}

grpc::Status RepositoryService::ListRepository(grpc::ServerContext*,
                                               const v1::ListRepositoryRequest*,
                                               v1::ListRepositoryResponse* response) {
  for (const RepositoryEntry& entry : lifecycle_->List()) {
    v1::RepositoryModel* row = response->add_models();
    row->set_name(entry.name);
    row->set_in_repository(entry.in_repository);
    row->set_version(entry.version);
    row->set_load_error(entry.load_error);
    row->set_state(!entry.version.empty()    ? v1::MODEL_STATE_READY
                   : !entry.load_error.empty() ? v1::MODEL_STATE_FAILED
                                               : v1::MODEL_STATE_NOT_LOADED);
  }
  return grpc::Status::OK;
}

}  // namespace attnserve::server
