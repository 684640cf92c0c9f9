// The oneDNN engine: the production attention engine. Tokens of all sequences
// of a batch are packed end to end (no padding); the Q/K/V projection and the
// output projection each run as one oneDNN matmul over every token of the
// batch; attention runs per (sequence, block of query rows) on all cores, with
// oneDNN matmuls for Q.K^T and P.V and a fused mask + normalization kernel.
// Thread-safe: concurrent Run calls are serialized.
#ifndef ATTNSERVE_CORE_ONEDNN_ENGINE_H_
#define ATTNSERVE_CORE_ONEDNN_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine.h"

namespace attnserve::core {

struct OneDnnEngineOptions {
  // Threads for one batch (OpenMP); 0 = every core (OpenMP's default).
  int num_threads = 0;
};

class OneDnnEngine : public Engine {
 public:
  // Reorders the weights into the layout (and precision) the matmuls use and
  // creates every primitive. Errors: an invalid model (INVALID_ARGUMENT) or a
  // oneDNN failure (INTERNAL).
  static absl::StatusOr<std::unique_ptr<OneDnnEngine>> Create(
      std::shared_ptr<const Model> model, const OneDnnEngineOptions& options = {});

  ~OneDnnEngine() override;

  const Model& model() const override;
  absl::StatusOr<std::vector<SequenceOutput>> Run(
      std::span<const SequenceInput> batch) override;

  // How many oneDNN primitives this engine has created since construction.
  // Constant in steady state: every primitive takes runtime shapes, so a
  // batch of any composition creates none.
  uint64_t primitives_created() const;

  // The instruction set oneDNN dispatches to on this machine (e.g.
  // "avx512_core_bf16"), for startup logs.
  static std::string IsaName();

 private:
  struct Impl;
  explicit OneDnnEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_ONEDNN_ENGINE_H_
