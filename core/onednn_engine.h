// The oneDNN engine: the production attention engine. Tokens of all sequences
// of a batch are packed end to end (no padding); the Q/K/V projection and the
// output projection each run as one oneDNN matmul over every token of the
// batch; attention runs per (sequence, block of query rows, head) on all
// cores, with oneDNN matmuls for Q.K^T and P.V and a fused mask +
// normalization kernel. A sequence whose weights are not returned streams its
// keys in tiles with a running (online) normalization when it is long, so
// its memory is O(L * d_model), not O(heads * L^2). With "precision": "bf16"
// the weights are held in bf16 and the matmuls take bf16 operands with f32
// accumulation (AMX or AVX512-BF16, whichever oneDNN finds); normalization
// and outputs stay f32. A CPU without native bf16 computes in fp32 instead
// (see compute_path()). Every primitive is created once, in Create.
// Thread-safe: concurrent Run calls are serialized.
#ifndef ATTNSERVE_CORE_ONEDNN_ENGINE_H_
#define ATTNSERVE_CORE_ONEDNN_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/profile.h"

namespace attnserve::core {

struct OneDnnEngineOptions {
  // Threads for one batch (OpenMP); 0 = every core (OpenMP's default). Both
  // the engine's own parallel loops and oneDNN's use exactly this many.
  int num_threads = 0;
  // Attention tuning; the defaults suit a 1-2 MiB L2 per core.
  // Score floats (query rows x keys) one task keeps at once, per thread.
  // Sequences whose 64-row block of scores would exceed it (and whose weights
  // are not returned) stream their keys in tiles instead. Must be >= 64.
  size_t score_block_floats = size_t{1} << 18;
  // Keys per tile on that streaming path. Must be >= 1.
  uint32_t key_tile = 1024;
  // Query rows per attention task at most: larger blocks mean fewer, larger
  // matmul calls (256 measured 5-15% faster than 64 on the benchmark shapes).
  // Fewer where a block of scores would exceed score_block_floats and the
  // weights are returned, and halved (to 64 at least) for a batch too small
  // to give every thread 4 tasks. Must be >= 8.
  uint32_t block_rows = 256;
  // A batch whose returned weights total at least this many bytes has their
  // pages mapped up front, on all threads, before the attention writes them
  // (see PrefaultLargeOutputs in the .cc). Measured here: 25% faster with
  // 2 GiB of weights (L = 8192), 30% slower with 256 MiB (L = 2048), where
  // faults inside the attention are cheaper than a separate pass.
  size_t prefault_bytes = size_t{1} << 30;
  // Time every stage of every Run (see TakeProfile); for benchmarks.
  bool profile = false;
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

  // 2 x d_model x 4 bytes (fp32 attention) or 2 bytes (bf16 attention: dot
  // relevance in a bf16 model on a CPU with native bf16).
  size_t KvRowBytes() const override;

  // How many oneDNN primitives this engine has created since construction.
  // Constant in steady state: every primitive takes runtime shapes, so a
  // batch of any composition creates none.
  uint64_t primitives_created() const;

  // Which precision this engine computes in and why, for startup logs: e.g.
  // "bf16 (avx512_core_bf16; projections and attention)" or
  // "fp32 (bf16 requested; avx2 has no native bf16)".
  std::string compute_path() const override;

  // Where the time of the Run calls since the last TakeProfile went (all
  // zero, runs included, unless created with options.profile); starts
  // counting again from zero.
  EngineProfile TakeProfile();

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
