// core_bench: throughput of the attention engines on the shapes,
// against the machine's roof (one large oneDNN fp32 matmul) measured in the
// same run. Prints Google Benchmark's table, then a summary of medians:
// time per batch, GFLOP/s with FLOPs = 2*B*L*d*4d + 4*B*L^2*d, % of roof, and
// the oneDNN engine's speedup over the reference engine.
//
//   build/bench/core_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/onednn_engine.h"
#include "dnnl.hpp"

namespace attnserve::core {
namespace {

struct Shape {
  int batch, length, d_model, heads;
};
const Shape kShapes[] = {{1, 128, 256, 8},   {32, 128, 256, 8},  {8, 512, 512, 8},
                         {1, 2048, 1024, 16}, {1, 8192, 512, 8}};

double Flops(const Shape& s) {
  const double B = s.batch, L = s.length, d = s.d_model;
  return 2 * B * L * d * 4 * d + 4 * B * L * L * d;
}

std::shared_ptr<const Model> BenchModel(const Shape& s) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  auto m = std::make_shared<Model>();
  m->name = "bench";
  m->config.d_model = s.d_model;
  m->config.num_heads = s.heads;
  m->config.max_length = s.length;
  m->config.scale = 1.0 / std::sqrt(double(s.d_model / s.heads));
  const size_t d = s.d_model;
  for (auto* w : {&m->weights.q_weight, &m->weights.k_weight, &m->weights.v_weight,
                  &m->weights.out_weight}) {
    w->resize(d * d);
    for (float& x : *w) x = u(rng);
  }
  for (auto* b : {&m->weights.q_bias, &m->weights.k_bias, &m->weights.v_bias,
                  &m->weights.out_bias}) {
    b->assign(d, 0.01f);
  }
  return m;
}

// Inputs for B sequences of length L; `weights` asks for per-head weights.
struct Inputs {
  std::vector<float> data;
  std::vector<SequenceInput> seqs;
  Inputs(const Shape& s, bool weights) {
    std::mt19937 rng(2);
    std::uniform_real_distribution<float> u(-1, 1);
    const size_t n = size_t(s.length) * s.d_model;
    data.resize(n * s.batch);
    for (float& x : data) x = u(rng);
    for (int b = 0; b < s.batch; ++b) {
      SequenceInput in;
      in.data = std::span<const float>(data).subspan(b * n, n);
      in.length = s.length;
      in.weights = weights ? WeightsMode::kPerHead : WeightsMode::kNone;
      seqs.push_back(in);
    }
  }
};

void RunEngine(benchmark::State& state, Engine& engine, const Shape& s, bool weights) {
  Inputs in(s, weights);
  for (auto _ : state) {
    auto out = engine.Run(in.seqs);
    if (!out.ok()) {
      state.SkipWithError(std::string(out.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(out->data());
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(Flops(s) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_OneDnn(benchmark::State& state, Shape s, bool weights) {
  auto engine = OneDnnEngine::Create(BenchModel(s));
  if (!engine.ok()) return state.SkipWithError("engine creation failed");
  RunEngine(state, **engine, s, weights);
}

void BM_Reference(benchmark::State& state, Shape s) {
  auto engine = CreateReferenceEngine(BenchModel(s));
  if (!engine.ok()) return state.SkipWithError("engine creation failed");
  RunEngine(state, **engine, s, false);
}

// The roof: one 2048^3 fp32 matmul, primitive created once, weights in the
// layout oneDNN prefers (the best case for any GEMM-bound code here).
void BM_Roof(benchmark::State& state) {
  using dnnl::memory;
  const memory::dim n = 2048;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(eng);
  const auto a_md = memory::desc({n, n}, memory::data_type::f32, memory::format_tag::ab);
  const auto any = memory::desc({n, n}, memory::data_type::f32, memory::format_tag::any);
  auto pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, any, a_md), eng);
  memory a(a_md, eng), b(pd.weights_desc(), eng), c(a_md, eng);
  for (auto* m : {&a, &b}) {
    float* p = static_cast<float*>(m->get_data_handle());
    for (size_t i = 0; i < m->get_desc().get_size() / sizeof(float); ++i) p[i] = 0.001f * (i % 7);
  }
  dnnl::matmul prim(pd);
  for (auto _ : state) {
    prim.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(2.0 * n * n * n / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

std::string ShapeName(const Shape& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "B%d_L%d_d%d_h%d", s.batch, s.length, s.d_model, s.heads);
  return buf;
}

// Collects each benchmark's median (or its only run) for the summary.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  struct Result {
    double seconds, gflops;
  };
  std::map<std::string, Result> results;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (!median && r.run_type == Run::RT_Aggregate) continue;
      if (!median && results.count(r.run_name.function_name)) continue;  // keep the median
      results[r.run_name.function_name] = {r.GetAdjustedRealTime() / 1e3,  // ms -> s
                                   r.counters.count("GFLOPS") ? double(r.counters.at("GFLOPS")) : 0};
    }
  }
};

void PrintSummary(const SummaryReporter& rep) {
  auto find = [&](const std::string& name) -> const SummaryReporter::Result* {
    auto it = rep.results.find(name);
    return it == rep.results.end() ? nullptr : &it->second;
  };
  const auto* roof = find("roof/matmul_2048");
  const double roof_gflops = roof ? roof->gflops : 0;
  std::printf("\nattnserve core_bench summary (medians; %d threads; oneDNN ISA %s)\n",
              omp_get_max_threads(), OneDnnEngine::IsaName().c_str());
  std::printf("roof: oneDNN fp32 matmul 2048^3 = %.1f GFLOP/s\n\n", roof_gflops);
  std::printf("| B | L | d_model | heads | weights | ms/batch | GFLOP/s | %% of roof |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : kShapes) {
    for (bool w : {false, true}) {
      const auto* r = find("onednn/" + ShapeName(s) + (w ? "/weights" : "/no_weights"));
      if (r == nullptr) continue;
      std::printf("| %d | %d | %d | %d | %s | %.2f | %.1f | %.0f%% |\n", s.batch, s.length,
                  s.d_model, s.heads, w ? "per-head" : "none", r->seconds * 1e3, r->gflops,
                  roof_gflops > 0 ? 100 * r->gflops / roof_gflops : 0);
    }
  }
  const Shape ref_shape = kShapes[1];
  const auto* ref = find("reference/" + ShapeName(ref_shape));
  const auto* fast = find("onednn/" + ShapeName(ref_shape) + "/no_weights");
  if (ref && fast) {
    std::printf("\noneDNN engine vs reference engine on %s: %.1f ms vs %.1f ms = %.0fx\n",
                ShapeName(ref_shape).c_str(), fast->seconds * 1e3, ref->seconds * 1e3,
                ref->seconds / fast->seconds);
  }
}

}  // namespace
}  // namespace attnserve::core

int main(int argc, char** argv) {
  using namespace attnserve::core;
  benchmark::RegisterBenchmark("roof/matmul_2048", BM_Roof)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (const Shape& s : kShapes) {
    for (bool w : {false, true}) {
      benchmark::RegisterBenchmark(
          ("onednn/" + ShapeName(s) + (w ? "/weights" : "/no_weights")).c_str(), BM_OneDnn, s, w)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  benchmark::RegisterBenchmark(("reference/" + ShapeName(kShapes[1])).c_str(), BM_Reference,
                               kShapes[1])
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  PrintSummary(reporter);
  return 0;
}
