// serve_bench --protocol v2: what the KServe v2 protocol costs against
// attnserve.v1, measured in one run against one attnserve process on
// 127.0.0.1 (the demo model): for each length and concurrency, v1 Attend
// (FP32), v2 ModelInfer with raw FP32 input and v2 with raw BF16 input (half
// the request bytes) — the same rows, the same batcher. Variants are
// interleaved over several rounds (the order rotates each round) and the
// median of the rounds is reported, so a burst of load from elsewhere on a
// shared machine lands on every variant alike. Prints a Markdown table with
// each figure's ratio to v1 and the target (v2 FP32 keeps >= 90% of
// v1's requests/s).
#ifndef ATTNSERVE_BENCH_SERVE_BENCH_V2_H_
#define ATTNSERVE_BENCH_SERVE_BENCH_V2_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attnserve::bench {

struct V2BenchOptions {
  int rounds = 3;                           // each (variant, L, c) measured this many times
  double seconds = 5;                       // per measurement
  std::vector<uint32_t> lengths = {128, 512};
  std::vector<int> levels = {1, 64};        // closed-loop concurrency
  std::string server_binary;
};

// Runs the comparison and prints it on stdout (progress on stderr). Returns
// 0 when every call was answered OK, 1 otherwise or when the server could not
// start. The target's PASS/FAIL is printed, not returned.
int RunV2Comparison(const V2BenchOptions& options);

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_SERVE_BENCH_V2_H_
