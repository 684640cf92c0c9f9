// ModelRegistry: every model of the model repository, each loaded once with
// its oneDNN engine and its own dynamic batcher. The set of models is
// constant after Load; lookups are thread-safe.
#ifndef ATTNSERVE_SERVER_MODEL_REGISTRY_H_
#define ATTNSERVE_SERVER_MODEL_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/onednn_engine.h"
#include "server/batcher.h"
#include "server/metrics.h"

namespace attnserve::server {

struct ServedModel {
  std::shared_ptr<const core::Model> model;
  std::unique_ptr<core::OneDnnEngine> engine;
  std::unique_ptr<Batcher> batcher;  // feeds `engine`; declared last: drained first
  const std::string& name() const { return model->name; }
  const core::ModelConfig& config() const { return model->config; }
};

class ModelRegistry {
 public:
  // Loads every directory of `repository` (hidden ones skipped) as a model.
  // The default model is `default_model`, or the only one, or the first by
  // name. Errors name the directory or file at fault: an unreadable or empty
  // repository, a model that fails to load, an unknown default model, bad
  // batcher options. `metrics` (optional) receives model_info and the
  // batchers' queue/batch observations; `clock` must outlive the registry.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(
      const std::string& repository, const std::string& default_model,
      const BatcherOptions& batching, int threads, Clock* clock, Metrics* metrics);

  // The model named `name`, or the default model for ""; nullptr if unknown.
  ServedModel* Find(const std::string& name) const;

  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }
  const std::string& default_name() const { return default_name_; }

  // Every batcher stops accepting and dispatches what it holds now; does not block.
  void BeginDrain();

  // Drains every batcher: stops accepting, answers everything accepted, joins.
  void Drain();

 private:
  std::vector<std::unique_ptr<ServedModel>> models_;  // sorted by name
  std::string default_name_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MODEL_REGISTRY_H_
