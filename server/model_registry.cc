#include "server/model_registry.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <system_error>
#include <thread>
#include <utility>

#include <openssl/evp.h>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/onednn_engine.h"
#include "server/status_names.h"

namespace attnserve::server {
namespace {

// At most this many engine-failure log lines per second (the rest are counted
// in the metric and summarized in the next line).
constexpr uint32_t kFailureLogsPerSecond = 10;

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

absl::StatusOr<std::vector<std::string>> ListModelDirectories(const std::string& repository) {
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
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string ModelVersion(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string material;
  if (std::ifstream config(fs::path(dir) / "config.json", std::ios::binary); config) {
    material.assign(std::istreambuf_iterator<char>(config), std::istreambuf_iterator<char>());
  } else {
    material = "(no config.json)";
  }
  std::error_code ec;
  const fs::path weights = fs::path(dir) / "weights.safetensors";
  const auto size = fs::file_size(weights, ec);
  const auto mtime = fs::last_write_time(weights, ec);
  absl::StrAppend(&material, "\n", ec ? "(no weights.safetensors)"
                                      : absl::StrCat(size, " ", mtime.time_since_epoch().count()));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(material.data(), material.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < 6 && i < length; ++i) absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
  return hex;
}

EngineFactory OneDnnEngineFactory() {
  return [](std::shared_ptr<const core::Model> model,
            int threads) -> absl::StatusOr<std::unique_ptr<core::Engine>> {
    auto engine = core::OneDnnEngine::Create(std::move(model), {.num_threads = threads});
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<core::Engine>(*std::move(engine));
  };
}

ModelRegistry::ModelRegistry(const ModelRegistryOptions& options, Clock* clock, Metrics* metrics)
    : options_(options),
      factory_(options.engine_factory ? options.engine_factory : OneDnnEngineFactory()),
      clock_(clock),
      metrics_(metrics),
      failure_log_limiter_(kFailureLogsPerSecond, clock),
      models_(std::make_shared<const ModelSet>()) {}

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

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::LoadServedModel(
    const std::string& dir, const std::string& version) {
  absl::StatusOr<core::Model> model = core::LoadModel(dir);
  if (!model.ok()) return model.status();
  auto served = std::make_shared<ServedModel>();
  served->version_ = version;
  served->model = std::make_shared<const core::Model>(*std::move(model));
  auto engine = factory_(served->model, options_.threads);
  if (!engine.ok()) {
    const absl::Status& e = engine.status();
    return absl::Status(e.code() == absl::StatusCode::kResourceExhausted ? e.code()
                                                                         : absl::StatusCode::kInternal,
                        absl::StrCat("model '", served->name(), "': the engine could not be made: ",
                                     e.message()));
  }
  served->engine_ = *std::move(engine);
  auto batcher = Batcher::Create(options_.batching, RunFunction(served.get()), clock_,
                                 HooksFor(served->name(), metrics_),
                                 [config = served->config()](const core::SequenceInput& s) {
                                   return core::SequenceBytes(config, s);
                                 });
  if (!batcher.ok()) return batcher.status();
  served->batcher = *std::move(batcher);
  return served;
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const ModelRegistryOptions& options, Clock* clock, Metrics* metrics) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be positive; was ", options.threads));
  }
  auto dirs = ListModelDirectories(options.repository);
  if (!dirs.ok()) return dirs.status();
  if (dirs->empty()) {
    return absl::NotFoundError(absl::StrCat("model repository '", options.repository,
                                            "' holds no model directory (NAME/config.json + "
                                            "NAME/weights.safetensors)"));
  }
  auto registry = std::unique_ptr<ModelRegistry>(new ModelRegistry(options, clock, metrics));
  for (const std::string& dir : *dirs) {
    // The version is read before the files: if they change while loading,
    // the next poll sees a newer version and loads again.
    const std::string version = ModelVersion(dir);
    auto served = registry->LoadServedModel(dir, version);
    if (!served.ok()) return served.status();
    if (absl::Status s = registry->Publish(*std::move(served)); !s.ok()) return s;
  }
  registry->default_name_ =
      options.default_model.empty() ? registry->models()->front()->name() : options.default_model;
  if (registry->Find("") == nullptr) {
    return absl::NotFoundError(absl::StrCat("--default-model '", options.default_model,
                                            "' is not a model of repository '",
                                            options.repository, "'"));
  }
  return registry;
}

ModelRegistry::~ModelRegistry() {
  // Every batcher drains and joins (retiring ones included) before the gate
  // goes; outside the lock, since their last callbacks may still look models up.
  std::shared_ptr<const ModelSet> models;
  std::vector<std::shared_ptr<ServedModel>> retiring;
  {
    std::lock_guard<std::mutex> lock(mu_);
    models = std::exchange(models_, std::make_shared<const ModelSet>());
    retiring.swap(retiring_);
  }
  models.reset();
  retiring.clear();
}

std::shared_ptr<ServedModel> ModelRegistry::Find(const std::string& name) const {
  const std::string& wanted = name.empty() ? default_name_ : name;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& m : *models_) {
    if (m->name() == wanted) return m;
  }
  return nullptr;
}

std::shared_ptr<const ModelSet> ModelRegistry::models() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_;
}

absl::Status ModelRegistry::Publish(std::shared_ptr<ServedModel> model,
                                    const std::function<void()>& on_published) {
  std::shared_ptr<ServedModel> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) {
      return absl::UnavailableError(
          absl::StrCat("server is draining; model '", model->name(), "' was not loaded"));
    }
    auto next = std::make_shared<ModelSet>();
    next->reserve(models_->size() + 1);
    for (const auto& m : *models_) {
      if (m->name() == model->name()) {
        old = m;
      } else {
        next->push_back(m);
      }
    }
    next->push_back(model);
    std::sort(next->begin(), next->end(),
              [](const auto& a, const auto& b) { return a->name() < b->name(); });
    models_ = std::move(next);
    if (old != nullptr) retiring_.push_back(old);
  }
  if (metrics_ != nullptr) {
    metrics_->AddModel(model->name(), model->config(), model->version());
    if (old == nullptr) metrics_->SetQueueDepth(model->name(), 0);  // a series from the start
  }
  if (on_published) on_published();
  if (old != nullptr) Retire(std::move(old));
  return absl::OkStatus();
}

absl::Status ModelRegistry::Remove(const std::string& name) {
  std::shared_ptr<ServedModel> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto next = std::make_shared<ModelSet>();
    for (const auto& m : *models_) {
      if (m->name() == name) {
        old = m;
      } else {
        next->push_back(m);
      }
    }
    if (old == nullptr) return absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded"));
    models_ = std::move(next);
    retiring_.push_back(old);
  }
  if (metrics_ != nullptr) metrics_->RemoveModel(name);
  Retire(std::move(old));
  return absl::OkStatus();
}

// Requests that found `model` before it left the set may still be about to
// submit to it: its batcher keeps accepting until none holds it (they never
// block while holding it), so none of them is refused for a swap. Then it
// drains: everything accepted is answered on this version.
void ModelRegistry::Retire(std::shared_ptr<ServedModel> model) {
  ServedModel* const raw = model.get();
  model.reset();  // retiring_ holds it now
  const int64_t deadline_us = clock_->NowMicros() + options_.retire_timeout_ms * 1000;
  auto held_elsewhere = [this, raw] {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& m : retiring_) {
      if (m.get() == raw) return m.use_count() > 1;
    }
    return false;
  };
  while (held_elsewhere() && clock_->NowMicros() < deadline_us) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!raw->batcher->WaitDrained(deadline_us)) {
    spdlog::error("model {} (version {}): still computing {} ms after it was swapped out or "
                  "removed; it is released at shutdown",
                  raw->name(), raw->version(), options_.retire_timeout_ms);
    return;
  }
  std::shared_ptr<ServedModel> last;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(retiring_.begin(), retiring_.end(),
                           [raw](const auto& m) { return m.get() == raw; });
    if (it == retiring_.end()) return;
    last = std::move(*it);
    retiring_.erase(it);
  }
  // Released here, outside the lock; if a late holder still has it, that
  // holder releases it (its batch thread has already ended).
}

std::vector<std::shared_ptr<ServedModel>> ModelRegistry::AllModels() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<ServedModel>> all(models_->begin(), models_->end());
  all.insert(all.end(), retiring_.begin(), retiring_.end());
  return all;
}

void ModelRegistry::StartDraining() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  for (const auto& m : AllModels()) m->batcher->StartDraining();
}

bool ModelRegistry::Drain(int64_t deadline_us) {
  StartDraining();
  bool all = true;
  for (const auto& m : AllModels()) all = m->batcher->WaitDrained(deadline_us) && all;
  return all;
}

}  // namespace attnserve::server
