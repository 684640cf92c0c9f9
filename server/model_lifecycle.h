// ModelLifecycle: adds, updates and removes the models of a ModelRegistry
// while serving, from the model repository, by polling it
// (--model-control poll) or on request (explicit: the
// attnserve.v1.ModelRepository RPCs). Thread-safe; operations run one at a
// time (a load may take seconds; List never waits for one).
//
// What counts as a change: ModelVersion() of the directory (config.json's
// bytes, weights.safetensors' size and modification time). A new directory
// is loaded; a changed one is loaded beside the served version and swapped in
// once it has loaded (requests already accepted finish on the old version);
// a removed one is unloaded after answering what it accepted. A load that
// fails is logged naming the file at fault, counted in
// attnserve_model_load_failures_total{model}, and reported to the listener
// as not serving; the previous version, if any, keeps serving. A poll does
// not retry the same failed version (the files must change again); an
// explicit LoadModel always tries.
#ifndef ATTNSERVE_SERVER_MODEL_LIFECYCLE_H_
#define ATTNSERVE_SERVER_MODEL_LIFECYCLE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace attnserve::server {

// --model-control.
enum class ModelControl {
  kNone,      // the models loaded at startup, until exit
  kPoll,      // the repository is re-read every poll_interval_ms
  kExplicit,  // LoadModel / UnloadModel RPCs
};
// "none", "poll", "explicit"; INVALID_ARGUMENT for anything else.
absl::StatusOr<ModelControl> ParseModelControl(const std::string& text);
const char* ModelControlName(ModelControl control);

struct ModelLifecycleOptions {
  ModelControl control = ModelControl::kNone;
  int64_t poll_interval_ms = 5000;  // kPoll: time between two reads of the repository; >= 1
};

// What health should say of a model name after a change.
enum class ModelHealth {
  kServing,     // a version serves
  kNotServing,  // its files failed to load (an older version may still serve)
  kGone,        // unloaded, or its failed directory was removed
};

// One row of ListRepository.
struct RepositoryEntry {
  std::string name;
  bool in_repository = false;  // a directory of the repository now
  std::string version;         // the version serving; empty: none
  std::string load_error;      // the last failed load of its current files
};

struct LoadOutcome {
  std::shared_ptr<ServedModel> model;  // the version serving now
  bool changed = false;                // false: it was already loaded
};

class ModelLifecycle {
 public:
  using HealthListener = std::function<void(const std::string& model, ModelHealth health)>;

  // `registry` and `metrics` (may be null) must outlive the lifecycle;
  // `on_health` is called after every change, one at a time, never under a
  // lock of the registry.
  ModelLifecycle(ModelRegistry* registry, Metrics* metrics, const ModelLifecycleOptions& options,
                 HealthListener on_health);
  ~ModelLifecycle();  // Stop()s and joins the poll thread.

  // Starts the poll thread (kPoll; otherwise nothing). Call once, when
  // whatever on_health touches is ready.
  void Start();

  ModelLifecycle(const ModelLifecycle&) = delete;
  ModelLifecycle& operator=(const ModelLifecycle&) = delete;

  ModelControl control() const { return options_.control; }

  // LoadModel RPC: loads or updates directory `name`. FAILED_PRECONDITION
  // unless kExplicit; INVALID_ARGUMENT for a name that is not a plain
  // directory name or a model that fails to load (naming the file);
  // NOT_FOUND when the repository has no such directory; INTERNAL or
  // RESOURCE_EXHAUSTED when its engine cannot be made; UNAVAILABLE once
  // stopping.
  absl::StatusOr<LoadOutcome> Load(const std::string& name);

  // UnloadModel RPC: FAILED_PRECONDITION unless kExplicit; NOT_FOUND when
  // not loaded; UNAVAILABLE once stopping. Returns once it is drained.
  absl::Status Unload(const std::string& name);

  // One read of the repository, whatever the mode: loads new and changed
  // directories, unloads removed ones. The poll thread calls it; tests may.
  // An unreadable repository changes nothing (logged).
  void PollNow();

  // Every directory of the repository and every loaded model, by name.
  std::vector<RepositoryEntry> List() const;

  // No operation starts after this (UNAVAILABLE); the poll thread ends after
  // the one it runs. Does not block.
  void Stop();

 private:
  struct Failure {
    std::string version;
    std::string error;
  };
  // REQUIRES: ops_mu_ held. `from_poll`: skip a version that already failed.
  absl::StatusOr<LoadOutcome> LoadLocked(const std::string& name, bool from_poll);
  absl::Status UnloadLocked(const std::string& name);
  void PollLoop();
  bool stopping() const;

  // Constant after construction.
  ModelRegistry* const registry_;
  Metrics* const metrics_;
  const ModelLifecycleOptions options_;
  const HealthListener on_health_;

  // Serializes operations; held across a load. Taken before mu_, never after.
  std::mutex ops_mu_;

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Failure> failures_ ABSL_GUARDED_BY(mu_);  // by model name

  std::thread poll_thread_;  // kPoll only; joined by the destructor
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_MODEL_LIFECYCLE_H_
