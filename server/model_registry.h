// ModelRegistry: every model of the model repository, each loaded once with
// its engine (made by an EngineFactory: the oneDNN engine in production, a
// failing or slow one in tests) and its own dynamic batcher. All models share
// one CPU budget: their engine runs take turns through one ComputeGate (see
// compute_gate.h). The set of models is constant after Load; lookups are
// thread-safe.
#ifndef ATTNSERVE_SERVER_MODEL_REGISTRY_H_
#define ATTNSERVE_SERVER_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "server/batcher.h"
#include "server/compute_gate.h"
#include "server/logging.h"
#include "server/metrics.h"

namespace attnserve::server {

// Makes the engine of one model; `threads` is the --threads budget every
// engine run may use (the runs of all models take turns). An error fails Load.
using EngineFactory = std::function<absl::StatusOr<std::unique_ptr<core::Engine>>(
    std::shared_ptr<const core::Model> model, int threads)>;

// The production factory: core::OneDnnEngine with num_threads = threads.
EngineFactory OneDnnEngineFactory();

// One served model. The batcher is public because the service submits to it
// (and tests read its queue depth); the engine is reachable only through the
// batcher, so nothing can run it outside the shared CPU budget.
class ServedModel {
 public:
  std::shared_ptr<const core::Model> model;
  std::unique_ptr<Batcher> batcher;  // feeds the engine; destroyed (drained) first

  const std::string& name() const { return model->name; }
  const core::ModelConfig& config() const { return model->config; }
  // The engine's compute path, for startup logs ("bf16 (avx512_core_bf16; ...)").
  std::string compute_path() const { return engine_->compute_path(); }

  ~ServedModel();

 private:
  friend class ModelRegistry;
  std::unique_ptr<core::Engine> engine_;  // outlives `batcher` (see ~ServedModel)
};

struct ModelRegistryOptions {
  std::string repository;     // directory of model directories
  std::string default_model;  // "" = the only model, or the first by name
  BatcherOptions batching;    // each model's batcher
  int threads = 1;            // engine threads per batch (the shared budget); >= 1
  EngineFactory engine_factory;  // empty = OneDnnEngineFactory()
};

class ModelRegistry {
 public:
  // Loads every directory of `options.repository` (hidden ones skipped) as a
  // model. The default model is `default_model`, or the only one, or the first
  // by name. Errors name the directory or file at fault: an unreadable or
  // empty repository, a model that fails to load, an engine the factory
  // cannot make, an unknown default model, bad batcher options. `metrics`
  // (optional) receives model_info, the batchers' queue/batch observations
  // and engine failures; `clock` must outlive the registry.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(const ModelRegistryOptions& options,
                                                             Clock* clock, Metrics* metrics);

  ~ModelRegistry();

  // The model named `name`, or the default model for ""; nullptr if unknown.
  ServedModel* Find(const std::string& name) const;

  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }
  const std::string& default_name() const { return default_name_; }

  // Every batcher stops accepting and dispatches what it holds now; does not block.
  void StartDraining();

  // StartDraining, then waits until every batcher has answered everything it
  // accepted and its thread has ended, or until clock time `deadline_us`.
  // True when all have; false when a batch (a stuck engine run) is still
  // going at the deadline: the batchers are then joined by the destructor.
  bool Drain(int64_t deadline_us);

 private:
  ModelRegistry(Clock* clock, Metrics* metrics);
  // The batch function of `served`: its engine run inside the compute gate,
  // exceptions turned into statuses, failures logged and counted.
  BatchFunction RunFunction(ServedModel* served);

  Clock* const clock_;
  Metrics* const metrics_;  // may be null
  ComputeGate gate_;        // declared before models_: outlives their batch threads
  RateLimiter failure_log_limiter_;
  std::vector<std::unique_ptr<ServedModel>> models_;  // sorted by name
  std::string default_name_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MODEL_REGISTRY_H_
