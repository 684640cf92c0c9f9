#include "server/model_registry.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

absl::StatusOr<std::vector<std::string>> ModelDirectories(const std::string& repository) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(repository, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model repository '", repository, "' is not a readable directory"));
  }
  std::vector<std::string> dirs;
  for (const auto& entry : fs::directory_iterator(repository, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && !name.empty() && name[0] != '.') dirs.push_back(entry.path());
  }
  if (ec) {
    return absl::NotFoundError(absl::StrCat("cannot list model repository '", repository,
                                            "': ", ec.message()));
  }
  if (dirs.empty()) {
    return absl::NotFoundError(absl::StrCat("model repository '", repository,
                                            "' holds no model directory (NAME/config.json + "
                                            "NAME/weights.safetensors)"));
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

BatcherHooks HooksFor(const std::string& name, Metrics* metrics) {
  if (metrics == nullptr) return {};
  BatcherHooks hooks;
  hooks.on_batch = [metrics, name](const BatchStats& s) {
    metrics->BatchDone(name, s.compute_us / 1e6, s.batch_size, s.batch_tokens);
  };
  hooks.on_queue_depth = [metrics, name](size_t depth) {
    metrics->SetQueueDepth(name, static_cast<double>(depth));
  };
  return hooks;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const std::string& repository, const std::string& default_model,
    const BatcherOptions& batching, int threads, Clock* clock, Metrics* metrics) {
  auto dirs = ModelDirectories(repository);
  if (!dirs.ok()) return dirs.status();
  auto registry = std::unique_ptr<ModelRegistry>(new ModelRegistry());
  for (const std::string& dir : *dirs) {
    absl::StatusOr<core::Model> model = core::LoadModel(dir);
    if (!model.ok()) return model.status();
    auto served = std::make_unique<ServedModel>();
    served->model = std::make_shared<const core::Model>(*std::move(model));
    auto engine = core::OneDnnEngine::Create(served->model, {.num_threads = threads});
    if (!engine.ok()) return engine.status();
    served->engine = *std::move(engine);
    core::Engine* raw_engine = served->engine.get();
    auto batcher = Batcher::Create(
        batching,
        [raw_engine](std::span<const core::SequenceInput> batch) { return raw_engine->Run(batch); },
        clock, HooksFor(served->name(), metrics));
    if (!batcher.ok()) return batcher.status();
    served->batcher = *std::move(batcher);
    if (metrics != nullptr) {
      metrics->AddModel(served->name(), served->config());
      metrics->SetQueueDepth(served->name(), 0);  // a series from startup, not first use
    }
    registry->models_.push_back(std::move(served));
  }
  registry->default_name_ = default_model.empty() ? registry->models_[0]->name() : default_model;
  if (registry->Find("") == nullptr) {
    return absl::NotFoundError(absl::StrCat("--default-model '", default_model,
                                            "' is not a model of repository '", repository, "'"));
  }
  return registry;
}

ServedModel* ModelRegistry::Find(const std::string& name) const {
  const std::string& wanted = name.empty() ? default_name_ : name;
  for (const auto& m : models_) {
    if (m->name() == wanted) return m.get();
  }
  return nullptr;
}

void ModelRegistry::BeginDrain() {
  for (const auto& m : models_) m->batcher->BeginDrain();
}

void ModelRegistry::Drain() {
  for (const auto& m : models_) m->batcher->Drain();
}

}  // namespace attnserve::server
