#include "bench/serve_bench_v2.h"

#include <cstdio>
#include <map>
#include <tuple>

#include "bench/serve_process.h"
#include "client/v2_client.h"

namespace attnserve::bench {
namespace {

struct Variant {
  const char* name;
  bool v2;
  const char* datatype;
};
constexpr Variant kVariants[] = {{"v1 Attend FP32", false, "FP32"},
                                 {"v2 ModelInfer FP32 raw", true, "FP32"},
                                 {"v2 ModelInfer BF16 raw", true, "BF16"}};
constexpr int kNumVariants = sizeof(kVariants) / sizeof(kVariants[0]);

struct Cell {
  std::vector<double> rps, p50_ms, p99_ms, batch;
  uint64_t errors = 0;
  double Median(const std::vector<double>& v) const { return Percentile(v, 0.5); }
};

// The request of `variant` for `length` rows of the demo model.
client::LoadRequest Request(const Variant& variant, uint32_t length, uint32_t d_model) {
  const v1::AttendRequest request = MakeRequest(length, d_model);
  if (!variant.v2) return client::MakeLoadRequest(request, d_model);
  return *client::MakeV2LoadRequest(request, d_model, variant.datatype);
}

}  // namespace

int RunV2Comparison(const V2BenchOptions& options) {
  if (options.rounds < 1 || options.seconds <= 0 || options.levels.empty() ||
      options.lengths.empty()) {
    std::fprintf(stderr, "--rounds, --seconds, --lengths and --concurrency must be positive\n");
    return 1;
  }
  ServerProcess server(options.server_binary, ServerProcess::Options{});
  if (!server.ok()) {
    std::fprintf(stderr, "cannot start %s\n", options.server_binary.c_str());
    return 1;
  }
  constexpr uint32_t kDemoDModel = 256;  // models/demo/config.json
  std::map<std::tuple<uint32_t, int, int>, Cell> cells;  // (L, c, variant)
  std::map<std::pair<uint32_t, int>, size_t> request_bytes;  // (L, variant)
  for (int round = 0; round < options.rounds; ++round) {
    for (uint32_t L : options.lengths) {
      for (int c : options.levels) {
        for (int k = 0; k < kNumVariants; ++k) {
          const int v = (k + round) % kNumVariants;  // rotate the order each round
          std::fprintf(stderr, "round %d/%d: L=%u c=%d %s\n", round + 1, options.rounds, L, c,
                       kVariants[v].name);
          const client::LoadRequest request = Request(kVariants[v], L, kDemoDModel);
          request_bytes[{L, v}] = request.bytes.size();
          const LevelResult r = RunLevel(server.client(), c, options.seconds, request);
          Cell& cell = cells[{L, c, v}];
          cell.rps.push_back(r.requests_per_s);
          cell.p50_ms.push_back(r.p50_ms);
          cell.p99_ms.push_back(r.p99_ms);
          cell.batch.push_back(r.mean_batch);
          cell.errors += r.errors;
        }
      }
    }
  }
  std::printf("demo model (d_model 256), closed loop over min(c, 4) connections, median of %d "
              "rounds of %.1f s each, variants interleaved\n\n",
              options.rounds, options.seconds);
  std::printf("| L | concurrency | protocol | request bytes | requests/s | vs v1 | p50 ms | p99 ms "
              "| mean batch | errors |\n|---|---|---|---|---|---|---|---|---|---|\n");
  uint64_t errors = 0;
  bool target_met = true;
  for (uint32_t L : options.lengths) {
    for (int c : options.levels) {
      const Cell& base = cells[{L, c, 0}];
      for (int v = 0; v < kNumVariants; ++v) {
        const Cell& cell = cells[{L, c, v}];
        const double ratio = cell.Median(cell.rps) / base.Median(base.rps);
        std::printf("| %u | %d | %s | %zu | %.1f | %.0f%% | %.2f | %.2f | %.1f | %llu |\n", L, c,
                    kVariants[v].name, request_bytes[{L, v}], cell.Median(cell.rps), 100 * ratio,
                    cell.Median(cell.p50_ms), cell.Median(cell.p99_ms), cell.Median(cell.batch),
                    static_cast<unsigned long long>(cell.errors));
        errors += cell.errors;
        if (v == 1 && ratio < 0.9) target_met = false;
      }
    }
  }
  std::printf("\ntarget: v2 FP32 keeps >= 90%% of v1's requests/s at every L and concurrency: %s\n",
              target_met ? "PASS" : "FAIL");
  return errors == 0 ? 0 : 1;
}

}  // namespace attnserve::bench
