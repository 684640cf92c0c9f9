#include "server/model_lifecycle.h"

#include <chrono>
#include <filesystem>
#include <set>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

// A load failure as the caller sees it: the engine's own failures keep their
// code (INTERNAL, RESOURCE_EXHAUSTED); anything wrong with the files
// (missing, unparsable, wrong shapes: NOT_FOUND, DATA_LOSS, ... from core) is
// INVALID_ARGUMENT, since NOT_FOUND means "no such model directory".
absl::Status LoadFailure(const std::string& name, const std::string& serving,
                         const absl::Status& cause) {
  const absl::StatusCode code = cause.code() == absl::StatusCode::kInternal ||
                                        cause.code() == absl::StatusCode::kResourceExhausted
                                    ? cause.code()
                                    : absl::StatusCode::kInvalidArgument;
  return absl::Status(
      code, absl::StrCat("model '", name, "' failed to load",
                         serving.empty() ? "" : absl::StrCat(" (version ", serving, " keeps serving)"),
                         ": ", cause.message()));
}

// A directory name of the repository: not empty, not hidden, no separator.
absl::Status CheckName(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("model name '", name, "' is not a directory name of the model repository "
                     "(non-empty, not starting with '.', no '/')"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelControl> ParseModelControl(const std::string& text) {
  if (text == "none") return ModelControl::kNone;
  if (text == "poll") return ModelControl::kPoll;
  if (text == "explicit") return ModelControl::kExplicit;
  return absl::InvalidArgumentError(
      absl::StrCat("--model-control must be none, poll or explicit; was '", text, "'"));
}

const char* ModelControlName(ModelControl control) {
  switch (control) {
    case ModelControl::kPoll:
      return "poll";
    case ModelControl::kExplicit:
      return "explicit";
    case ModelControl::kNone:
      break;
  }
  return "none";
}

ModelLifecycle::ModelLifecycle(ModelRegistry* registry, Metrics* metrics,
                               const ModelLifecycleOptions& options, HealthListener on_health)
    : registry_(registry), metrics_(metrics), options_(options), on_health_(std::move(on_health)) {}

void ModelLifecycle::Start() {
  if (options_.control == ModelControl::kPoll && !poll_thread_.joinable()) {
    poll_thread_ = std::thread([this] { PollLoop(); });
  }
}

ModelLifecycle::~ModelLifecycle() {
  Stop();
  if (poll_thread_.joinable()) poll_thread_.join();
}

void ModelLifecycle::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
}

bool ModelLifecycle::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

void ModelLifecycle::PollLoop() {
  const auto interval = std::chrono::milliseconds(options_.poll_interval_ms);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_cv_.wait_for(lock, interval, [this] { return stopping_; })) {
    lock.unlock();
    PollNow();
    lock.lock();
  }
}

absl::StatusOr<LoadOutcome> ModelLifecycle::Load(const std::string& name) {
  if (options_.control != ModelControl::kExplicit) {
    return absl::FailedPreconditionError(
        absl::StrCat("LoadModel needs --model-control explicit; this server runs with ",
                     ModelControlName(options_.control)));
  }
  std::lock_guard<std::mutex> ops(ops_mu_);
  return LoadLocked(name, /*from_poll=*/false);
}

absl::Status ModelLifecycle::Unload(const std::string& name) {
  if (options_.control != ModelControl::kExplicit) {
    return absl::FailedPreconditionError(
        absl::StrCat("UnloadModel needs --model-control explicit; this server runs with ",
                     ModelControlName(options_.control)));
  }
  std::lock_guard<std::mutex> ops(ops_mu_);
  return UnloadLocked(name);
}

absl::StatusOr<LoadOutcome> ModelLifecycle::LoadLocked(const std::string& name, bool from_poll) {
  if (stopping()) return absl::UnavailableError("server is draining; no model is loaded now");
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string dir = (std::filesystem::path(registry_->repository()) / name).string();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model repository '", registry_->repository(),
                                            "' has no directory '", name, "'"));
  }
  const std::string version = ModelVersion(dir);
  std::shared_ptr<ServedModel> current = registry_->Find(name);
  if (current != nullptr && current->version() == version) {
    bool had_failure = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      had_failure = failures_.erase(name) > 0;  // the files are back to the served version
    }
    if (had_failure) on_health_(name, ModelHealth::kServing);
    return LoadOutcome{std::move(current), false};
  }
  const std::string serving = current != nullptr ? current->version() : "";
  current.reset();  // a holder would keep the old version from being retired
  if (from_poll) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = failures_.find(name);
    if (it != failures_.end() && it->second.version == version) {
      return absl::FailedPreconditionError(it->second.error);  // already reported
    }
  }
  auto loaded = registry_->LoadServedModel(dir, version);
  if (loaded.ok()) loaded = stopping() ? absl::UnavailableError("server is draining") : loaded;
  if (!loaded.ok() && loaded.status().code() != absl::StatusCode::kUnavailable) {
    const absl::Status failure = LoadFailure(name, serving, loaded.status());
    spdlog::error("model repository: {}", std::string(failure.message()));
    if (metrics_ != nullptr) metrics_->LoadFailed(name);
    {
      std::lock_guard<std::mutex> lock(mu_);
      failures_[name] = Failure{version, std::string(failure.message())};
    }
    on_health_(name, ModelHealth::kNotServing);
    return failure;
  }
  if (!loaded.ok()) return loaded.status();
  std::shared_ptr<ServedModel> model = *std::move(loaded);
  // Health turns SERVING as the new version is published; Publish then
  // retires the old version and returns once it answered what it took.
  absl::Status published = registry_->Publish(model, [&] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      failures_.erase(name);
    }
    spdlog::info("model repository: model {} version {} serving{}", name, version,
                 serving.empty() ? "" : absl::StrCat(" (replacing version ", serving, ")"));
    on_health_(name, ModelHealth::kServing);
  });
  if (!published.ok()) return published;
  return LoadOutcome{std::move(model), true};
}

absl::Status ModelLifecycle::UnloadLocked(const std::string& name) {
  if (stopping()) return absl::UnavailableError("server is draining; models unload at exit");
  bool had_failure = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    had_failure = failures_.erase(name) > 0;
  }
  // Health turns first: probes see NOT_SERVING while the model drains.
  if (registry_->Find(name) != nullptr || had_failure) on_health_(name, ModelHealth::kGone);
  absl::Status removed = registry_->Remove(name);
  if (removed.ok()) spdlog::info("model repository: model {} unloaded", name);
  return removed;
}

void ModelLifecycle::PollNow() {
  std::lock_guard<std::mutex> ops(ops_mu_);
  if (stopping()) return;
  auto dirs = ListModelDirectories(registry_->repository());
  if (!dirs.ok()) {  // never unload everything because a mount hiccupped
    spdlog::warn("model repository: {}; nothing changed", std::string(dirs.status().message()));
    return;
  }
  std::set<std::string> present;
  for (const std::string& dir : *dirs) {
    const std::string name = std::filesystem::path(dir).filename().string();
    present.insert(name);
    LoadLocked(name, /*from_poll=*/true).IgnoreError();  // failures are logged and counted
  }
  std::vector<std::string> gone;
  {
    // A snapshot, held for the loop only: it keeps its models alive, and a
    // model is not retired while anything holds it.
    const auto models = registry_->models();
    for (const auto& m : *models) {
      if (!present.count(m->name())) gone.push_back(m->name());
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, failure] : failures_) {
      if (!present.count(name) && registry_->Find(name) == nullptr) gone.push_back(name);
    }
  }
  for (const std::string& name : gone) UnloadLocked(name).IgnoreError();
}

std::vector<RepositoryEntry> ModelLifecycle::List() const {
  std::map<std::string, RepositoryEntry> rows;
  if (auto dirs = ListModelDirectories(registry_->repository()); dirs.ok()) {
    for (const std::string& dir : *dirs) {
      const std::string name = std::filesystem::path(dir).filename().string();
      RepositoryEntry& row = rows[name];
      row.name = name;
      row.in_repository = true;
    }
  }
  const auto models = registry_->models();  // a snapshot, held for the loop
  for (const auto& m : *models) {
    RepositoryEntry& row = rows[m->name()];
    row.name = m->name();
    row.version = m->version();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, failure] : failures_) {
      RepositoryEntry& row = rows[name];
      row.name = name;
      row.load_error = failure.error;
    }
  }
  std::vector<RepositoryEntry> out;
  for (auto& [name, row] : rows) out.push_back(std::move(row));
  return out;
}

}  // namespace attnserve::server
