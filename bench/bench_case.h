// BenchCase: one measurement of core_bench (an attention row of the table, a
// roof matmul, the reference engine, or the memory-method check), runnable in
// the current process and spelled as a command-line argument so that
// core_bench can run each case in a fresh child process. Plain values; safe to
// share between threads. RunCase is not (it opens a PeakMemoryWindow).
#ifndef ATTNSERVE_BENCH_BENCH_CASE_H_
#define ATTNSERVE_BENCH_BENCH_CASE_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/model.h"

namespace attnserve::bench {

struct Shape {
  int batch = 1, length = 1, d_model = 1, heads = 1;
};

// FLOPs of one batch through one attention layer with projections:
// 8·B·L·d² for the Q, K, V and output projections (2·B·L·d·3d + 2·B·L·d·d)
// plus 4·B·L²·d for Q·Kᵀ and P·V over the full L² (no mask). The softmax,
// bias adds and weight copies are not counted.
double AttentionFlops(const Shape& s);

// The benchmarks' random model of shape `s` (d_model, heads; max_length =
// length) with projections and no positional encoding; `bf16` sets the
// compute precision.
std::shared_ptr<const core::Model> BenchModel(const Shape& s, bool bf16);

struct BenchCase {
  enum class Kind {
    kAttention,    // the oneDNN engine on `shape`, `bf16`, `per_head_weights`
    kReference,    // the reference engine on `shape`, fp32, no weights, one run
    kRoof,         // oneDNN matmul 2048³ in fp32 or bf16 (bf16 in, f32 out)
    kMemoryCheck,  // touches `mib` MiB inside a PeakMemoryWindow
    kWriteRoof,    // allocates and writes `mib` MiB the way returned weights are
  };
  Kind kind = Kind::kAttention;
  Shape shape;
  bool bf16 = false;
  bool per_head_weights = false;
  int mib = 0;

  // Human-readable, e.g. "B8_L512_d512_h8/bf16/per-head", "roof/fp32".
  std::string Name() const;
  // The argument form, e.g. "attention:8,512,512,8:bf16:per-head"; Parse
  // reads it back (nullopt if malformed).
  std::string Spec() const;
  static std::optional<BenchCase> Parse(std::string_view spec);
};

struct TimingOptions {
  int threads = 0;           // OpenMP threads for the engine and the roof; 0 = all cores
  int min_runs = 5;          // timed runs at least (after one warm-up run)
  double min_seconds = 0.5;  // and keep running until this much time has passed
  bool breakdown = false;    // attention cases: time each stage of the engine
};

// Runs `c` in this process and returns its result as JSON: "name", "ms"
// (median wall time of one run), "runs", "gflops" (at the median),
// "peak_extra_mib" (PeakMemoryWindow over the warm-up and timed runs, opened
// once the model, engine and inputs exist), "memory_reset_ok", and for roofs
// "impl" (oneDNN's implementation name); for kWriteRoof "gflops" is GB/s. With timing.breakdown, attention
// cases also give "breakdown": the mean milliseconds per timed run of each
// stage (core::EngineProfile; the attention steps as their share of the wall,
// thread-seconds / threads). On failure: "name" and "error".
nlohmann::json RunCase(const BenchCase& c, const TimingOptions& timing);

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_BENCH_CASE_H_
