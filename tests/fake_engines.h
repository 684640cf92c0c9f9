// Engines tests inject through ServerOptions::engine_factory (the seam of
// server/model_registry.h): the real oneDNN engine of each model, behind a
// hook that runs before every batch and may fail it (return a status or
// throw, as a broken engine would), delay it, or block it until the test
// lets it go. Also records how many engine runs overlapped, across models.
// Thread-safe. Header-only so any test suite can include it.
#ifndef ATTNSERVE_TESTS_FAKE_ENGINES_H_
#define ATTNSERVE_TESTS_FAKE_ENGINES_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/engine.h"
#include "core/onednn_engine.h"
#include "server/model_registry.h"

namespace attnserve::testing {

// What every engine of one HookedEngineFactory shares.
struct EngineHookState {
  // Called before each batch with the model name and the batch; a non-OK
  // status fails the batch with it; it may also throw or block.
  std::function<absl::Status(const std::string& model, std::span<const core::SequenceInput>)>
      before_run;
  std::atomic<int> running{0};      // engine runs in progress now, all models
  std::atomic<int> max_running{0};  // the most that ever overlapped
  std::atomic<int> runs{0};         // runs started
};

class HookedEngine final : public core::Engine {
 public:
  HookedEngine(std::unique_ptr<core::Engine> inner, std::shared_ptr<EngineHookState> state)
      : inner_(std::move(inner)), state_(std::move(state)) {}

  const core::Model& model() const override { return inner_->model(); }
  std::string compute_path() const override { return "hooked " + inner_->compute_path(); }

  absl::StatusOr<std::vector<core::SequenceOutput>> Run(
      std::span<const core::SequenceInput> batch) override {
    const int now = ++state_->running;
    int seen = state_->max_running.load();
    while (now > seen && !state_->max_running.compare_exchange_weak(seen, now)) {
    }
    ++state_->runs;
    struct Leave {
      std::atomic<int>& running;
      ~Leave() { --running; }
    } leave{state_->running};
    if (state_->before_run) {
      absl::Status st = state_->before_run(inner_->model().name, batch);  // may throw
      if (!st.ok()) return st;
    }
    return inner_->Run(batch);
  }

 private:
  std::unique_ptr<core::Engine> inner_;
  std::shared_ptr<EngineHookState> state_;
};

// A factory making HookedEngines over the oneDNN engine, all sharing `state`.
inline server::EngineFactory HookedEngineFactory(std::shared_ptr<EngineHookState> state) {
  return [state](std::shared_ptr<const core::Model> model,
                 int threads) -> absl::StatusOr<std::unique_ptr<core::Engine>> {
    auto inner = server::OneDnnEngineFactory()(std::move(model), threads);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<core::Engine>(new HookedEngine(*std::move(inner), state));
  };
}

// A gate tests open once; waiters block until then (or their bound passes).
class Gate {
 public:
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // True once open; false when `timeout` passed first.
  bool Wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_FAKE_ENGINES_H_
