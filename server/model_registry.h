// ModelRegistry: the models being served, each with its engine (made by an
// EngineFactory: the oneDNN engine in production, a failing or slow one in
// tests) and its own dynamic batcher. All models, and the old and new
// versions of a model during a swap, share one CPU budget: their engine runs
// take turns through one ComputeGate (see compute_gate.h). Thread-safe.
//
// The set of models is an immutable snapshot, replaced as a whole when a
// model is added, swapped or removed (ModelLifecycle decides when). Find
// returns a shared_ptr: a model swapped out or removed stays alive while a
// caller holds it, and the registry drains it (answers everything it
// accepted) before letting it go. Callers look a model up once per request
// and submit to that one.
#ifndef ATTNSERVE_SERVER_MODEL_REGISTRY_H_
#define ATTNSERVE_SERVER_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
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
  // ModelVersion() of its directory when it was loaded.
  const std::string& version() const { return version_; }
  // The engine's compute path, for startup logs ("bf16 (avx512_core_bf16; ...)").
  std::string compute_path() const { return engine_->compute_path(); }
  // Bytes of one row of a session's key/value cache; 0: no sessions.
  size_t kv_row_bytes() const { return engine_->KvRowBytes(); }

  ~ServedModel();

 private:
  friend class ModelRegistry;
  std::string version_;
  std::unique_ptr<core::Engine> engine_;  // outlives `batcher` (see ~ServedModel)
};

// The version of the model in directory `dir`: 12 hex digits of a SHA-256
// over config.json's bytes and weights.safetensors' size and modification
// time (a missing file hashes as missing). Reading it is cheap (no weights
// are read), so a poll can compare it; any edit of config.json, or any
// rewrite or touch of the weights, is a new version.
std::string ModelVersion(const std::string& dir);

// The model directories of `repository` (hidden ones skipped), sorted, as
// full paths; NOT_FOUND when it is not a readable directory.
absl::StatusOr<std::vector<std::string>> ListModelDirectories(const std::string& repository);

// Models sorted by name; immutable once published.
using ModelSet = std::vector<std::shared_ptr<ServedModel>>;

struct ModelRegistryOptions {
  std::string repository;     // directory of model directories
  std::string default_model;  // "" = the only model, or the first by name
  BatcherOptions batching;    // each model's batcher
  int threads = 1;            // engine threads per batch (the shared budget); >= 1
  EngineFactory engine_factory;  // empty = OneDnnEngineFactory()
  // A model swapped out or removed gets this long (ms) to answer what it
  // accepted before Publish/Remove give up waiting (it is then released when
  // the registry is destroyed).
  int64_t retire_timeout_ms = 10000;
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

  // The model named `name`, or the default model for ""; nullptr if unknown
  // (or, for "", when the default model is not loaded now).
  std::shared_ptr<ServedModel> Find(const std::string& name) const;

  // The models served now (a snapshot; never null).
  std::shared_ptr<const ModelSet> models() const;
  // Decided at startup (--default-model, or the only or first model by name)
  // and never changed: while that model is not loaded, Find("") is nullptr.
  const std::string& default_name() const { return default_name_; }
  const std::string& repository() const { return options_.repository; }

  // Loads directory `dir` of the repository (model name = directory name)
  // with its engine and batcher, tagged `version`; does not serve it yet.
  // Errors name the file at fault (core::LoadModel) or the engine's failure
  // (INTERNAL, RESOURCE_EXHAUSTED).
  absl::StatusOr<std::shared_ptr<ServedModel>> LoadServedModel(const std::string& dir,
                                                               const std::string& version);

  // Serves `model` from now on, in place of the model of the same name if
  // any. The replaced one is retired before this returns: once no caller
  // holds it any more its batcher stops accepting, answers what it accepted
  // and is released (or retire_timeout_ms passes). UNAVAILABLE after
  // StartDraining (the model is not served). `on_published` (optional) runs
  // once the model is served, before the old one is retired.
  absl::Status Publish(std::shared_ptr<ServedModel> model,
                       const std::function<void()>& on_published = {});

  // Stops serving model `name` and retires it (as Publish does). NOT_FOUND
  // when it is not served.
  absl::Status Remove(const std::string& name);

  // Every batcher (of served models and of models being retired) stops
  // accepting and dispatches what it holds now; no model is published after
  // this. Does not block.
  void StartDraining();

  // StartDraining, then waits until every batcher has answered everything it
  // accepted and its thread has ended, or until clock time `deadline_us`.
  // True when all have; false when a batch (a stuck engine run) is still
  // going at the deadline: the batchers are then joined by the destructor.
  bool Drain(int64_t deadline_us);

 private:
  ModelRegistry(const ModelRegistryOptions& options, Clock* clock, Metrics* metrics);
  // The batch function of `served`: its engine run inside the compute gate,
  // exceptions turned into statuses, failures logged and counted.
  BatchFunction RunFunction(ServedModel* served);

  // Waits until no caller holds `model` (in retiring_), drains its batcher
  // and releases it.
  void Retire(std::shared_ptr<ServedModel> model);
  // The served models and those being retired.
  std::vector<std::shared_ptr<ServedModel>> AllModels() const;

  // Constant after Load.
  const ModelRegistryOptions options_;
  EngineFactory factory_;
  Clock* const clock_;
  Metrics* const metrics_;  // may be null
  ComputeGate gate_;        // declared before the models: outlives their batch threads
  RateLimiter failure_log_limiter_;
  std::string default_name_;

  mutable std::mutex mu_;
  std::shared_ptr<const ModelSet> models_ ABSL_GUARDED_BY(mu_);
  // Swapped out or removed, not yet drained.
  std::vector<std::shared_ptr<ServedModel>> retiring_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MODEL_REGISTRY_H_
