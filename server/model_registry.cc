#include "server/model_registry.h"

#include <algorithm>
#include <exception>
#include <filesystem>
#include <new>
#include <system_error>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/onednn_engine.h"
#include "server/status_names.h"

namespace attnserve::server {
namespace {

// At most this many engine-failure log lines per second (the rest are counted
// in the metric and summarized in the next line).
constexpr uint32_t kFailureLogsPerSecond = 10;

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

// engine.Run with any exception (an injected engine may throw; core's never
// does) turned into a status: out of memory is RESOURCE_EXHAUSTED, anything
// else INTERNAL.
absl::StatusOr<std::vector<core::SequenceOutput>> RunCatching(
    core::Engine& engine, std::span<const core::SequenceInput> batch) {
  try {
    return engine.Run(batch);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("attention engine ran out of memory for the batch");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("attention engine failed: ", e.what()));
  } catch (...) {
    return absl::InternalError("attention engine failed with a non-standard exception");
  }
}

}  // namespace

EngineFactory OneDnnEngineFactory() {
  return [](std::shared_ptr<const core::Model> model,
            int threads) -> absl::StatusOr<std::unique_ptr<core::Engine>> {
    auto engine = core::OneDnnEngine::Create(std::move(model), {.num_threads = threads});
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<core::Engine>(*std::move(engine));
  };
}

ModelRegistry::ModelRegistry(Clock* clock, Metrics* metrics)
    : clock_(clock), metrics_(metrics), failure_log_limiter_(kFailureLogsPerSecond, clock) {}

ServedModel::~ServedModel() { batcher.reset(); }  // drain before the engine goes

BatchFunction ModelRegistry::RunFunction(ServedModel* served) {
  return [this, served](std::span<const core::SequenceInput> batch)
             -> absl::StatusOr<std::vector<core::SequenceOutput>> {
    absl::StatusOr<std::vector<core::SequenceOutput>> result;
    {
      ComputeGate::Pass pass(gate_);
      if (spdlog::should_log(spdlog::level::debug)) {
        size_t tokens = 0;
        for (const core::SequenceInput& s : batch) tokens += s.length;
        spdlog::debug("model {}: computing a batch of {} request(s), {} tokens", served->name(),
                      batch.size(), tokens);
      }
      result = RunCatching(*served->engine_, batch);
    }
    // Whole-batch failures fail every request of the batch; a sequence's own
    // failure (its status in the output) fails that request alone.
    size_t failed = result.ok() ? 0 : batch.size();
    absl::Status first = result.status();
    if (result.ok()) {
      for (const core::SequenceOutput& out : *result) {
        if (out.status.ok()) continue;
        if (failed++ == 0) first = out.status;
      }
    }
    if (failed == 0) return result;
    if (metrics_ != nullptr) {
      metrics_->EngineFailures(served->name(), StatusCodeName(static_cast<grpc::StatusCode>(first.code())),
                               static_cast<double>(failed));
    }
    uint64_t suppressed = 0;
    if (failure_log_limiter_.Allow(&suppressed)) {
      spdlog::error("model {}: engine failed {} of {} request(s) of a batch: {}{}",
                    served->name(), failed, batch.size(), first.ToString(),
                    suppressed ? absl::StrCat(" (", suppressed, " similar errors suppressed)")
                               : "");
    }
    return result;
  };
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const ModelRegistryOptions& options, Clock* clock, Metrics* metrics) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be positive; was ", options.threads));
  }
  auto dirs = ModelDirectories(options.repository);
  if (!dirs.ok()) return dirs.status();
  const EngineFactory factory =
      options.engine_factory ? options.engine_factory : OneDnnEngineFactory();
  auto registry = std::unique_ptr<ModelRegistry>(new ModelRegistry(clock, metrics));
  for (const std::string& dir : *dirs) {
    absl::StatusOr<core::Model> model = core::LoadModel(dir);
    if (!model.ok()) return model.status();
    auto served = std::make_unique<ServedModel>();
    served->model = std::make_shared<const core::Model>(*std::move(model));
    auto engine = factory(served->model, options.threads);
    if (!engine.ok()) return engine.status();
    served->engine_ = *std::move(engine);
    auto batcher = Batcher::Create(options.batching, registry->RunFunction(served.get()), clock,
                                   HooksFor(served->name(), metrics),
                                   [config = served->config()](const core::SequenceInput& s) {
                                     return core::SequenceBytes(config, s);
                                   });
    if (!batcher.ok()) return batcher.status();
    served->batcher = *std::move(batcher);
    if (metrics != nullptr) {
      metrics->AddModel(served->name(), served->config());
      metrics->SetQueueDepth(served->name(), 0);  // a series from startup, not first use
    }
    registry->models_.push_back(std::move(served));
  }
  registry->default_name_ =
      options.default_model.empty() ? registry->models_[0]->name() : options.default_model;
  if (registry->Find("") == nullptr) {
    return absl::NotFoundError(absl::StrCat("--default-model '", options.default_model,
                                            "' is not a model of repository '",
                                            options.repository, "'"));
  }
  return registry;
}

ModelRegistry::~ModelRegistry() { models_.clear(); }  // every batcher drains and joins

ServedModel* ModelRegistry::Find(const std::string& name) const {
  const std::string& wanted = name.empty() ? default_name_ : name;
  for (const auto& m : models_) {
    if (m->name() == wanted) return m.get();
  }
  return nullptr;
}

void ModelRegistry::StartDraining() {
  for (const auto& m : models_) m->batcher->StartDraining();
}

bool ModelRegistry::Drain(int64_t deadline_us) {
  StartDraining();
  bool all = true;
  for (const auto& m : models_) all = m->batcher->WaitDrained(deadline_us) && all;
  return all;
}

}  // namespace attnserve::server
