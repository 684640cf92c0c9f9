// core_bench: throughput and memory of the oneDNN attention engine on the
// issue's five shapes, fp32 and bf16, with and without per-head attention
// weights, against the machine's roofs (one 2048³ oneDNN matmul in fp32 and in
// bf16) measured in the same run. Prints a markdown table (or JSON with
// --format json, read by bench/compare_torch.py):
//
//   ms         median wall time of one batch (one warm-up run, then at least
//              --runs runs and --min-time seconds)
//   GFLOP/s    FLOPs / median, FLOPs = 8·B·L·d² (Q, K, V and output
//              projections) + 4·B·L²·d (Q·Kᵀ and P·V over the full L², no mask)
//   % of roof  GFLOP/s over the roof of the row's precision (the higher of the
//              roof's measurements at the start and at the end of the run)
//   peak extra MiB  peak resident memory during the runs above the resident
//              memory with the model, engine and inputs loaded; each row runs
//              in its own child process (see bench/peak_memory.h). It includes
//              the returned outputs, and the L×L weights per head when asked.
//
//   build/bench/core_bench                 # the full table (a few minutes)
//   build/bench/core_bench --quick         # fewer runs, roofs once, no reference
//   build/bench/core_bench --filter L8192 --format json
//   build/bench/core_bench --quick --breakdown   # and where each row's time goes
//
// Also prints the oneDNN engine's speed-up over the reference engine on
// (32, 128, 256, 8), fp32, no weights.

#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits.h>
#include <string>
#include <vector>

#include "bench/bench_case.h"
#include "core/onednn_engine.h"
#include "dnnl.hpp"

namespace attnserve::bench {
namespace {

using nlohmann::json;

const Shape kShapes[] = {{1, 128, 256, 8},   {32, 128, 256, 8},  {8, 512, 512, 8},
                         {1, 2048, 1024, 16}, {1, 8192, 512, 8}};
const Shape kReferenceShape = {32, 128, 256, 8};
constexpr int kMemoryCheckMiB = 256;
constexpr int kWriteRoofMiB = 1024;

struct Options {
  std::string format = "table";
  bool quick = false;
  std::string filter;
  bool reference = true;
  TimingOptions timing;
  std::string run_case;  // internal: run one case in this process, print JSON
};

std::string SelfPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, n) : "core_bench";
}

// Runs `c` in a fresh child process (this binary with --run-case) so that its
// memory is measured on a clean heap and a crash or OOM costs only its row.
json RunInChild(const BenchCase& c, const Options& o) {
  std::fprintf(stderr, "core_bench: %s ...\n", c.Name().c_str());
  const std::string cmd = "'" + SelfPath() + "' --run-case " + c.Spec() +
                          " --threads " + std::to_string(o.timing.threads) +
                          " --runs " + std::to_string(o.timing.min_runs) +
                          " --min-time " + std::to_string(o.timing.min_seconds) +
                          (o.timing.breakdown ? " --breakdown" : "");
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return {{"name", c.Name()}, {"error", "popen failed"}};
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = pclose(pipe);
  const size_t start = out.rfind("\n{");
  json r = json::parse(start == std::string::npos ? out : out.substr(start + 1), nullptr,
                       /*allow_exceptions=*/false);
  if (status != 0 || !r.is_object()) {
    return {{"name", c.Name()},
            {"error", "child process failed (status " + std::to_string(status) + ")"}};
  }
  return r;
}

// The 1-minute load average: how busy the (shared) machine was.
double LoadAverage() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

bool Selected(const BenchCase& c, const Options& o) {
  return o.filter.empty() || c.Name().find(o.filter) != std::string::npos;
}

std::vector<BenchCase> AttentionCases(const Options& o) {
  std::vector<BenchCase> cases;
  for (const Shape& s : kShapes) {
    for (bool bf16 : {false, true}) {
      for (bool weights : {false, true}) {
        BenchCase c{.kind = BenchCase::Kind::kAttention, .shape = s, .bf16 = bf16,
                    .per_head_weights = weights};
        if (Selected(c, o)) cases.push_back(c);
      }
    }
  }
  return cases;
}

// Roof of one precision: the best of its measurements (a busy neighbour can
// only slow a measurement down, so the best is the closest to the machine).
json BestRoof(const std::vector<json>& measurements) {
  json best = measurements.front();
  json gflops = json::array();
  for (const json& m : measurements) {
    gflops.push_back(m.value("gflops", 0.0));
    if (m.value("gflops", 0.0) > best.value("gflops", 0.0)) best = m;
  }
  best["measured_gflops"] = gflops;
  return best;
}

json RunAll(const Options& o) {
  json result;
  const auto v = dnnl::version();
  result["onednn"] = std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                     std::to_string(v->patch);
  result["isa"] = core::OneDnnEngine::IsaName();
  result["flops"] = "8*B*L*d^2 + 4*B*L^2*d";
  result["load_average_start"] = LoadAverage();
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  result["omp_wait_policy"] = wait_policy ? wait_policy : "default";
  BenchCase check;
  check.kind = BenchCase::Kind::kMemoryCheck;
  check.mib = kMemoryCheckMiB;
  result["memory_check"] = RunInChild(check, o);
  std::vector<json> roofs[2], write_roofs;
  auto measure_roofs = [&] {
    for (bool bf16 : {false, true}) {
      BenchCase roof;
      roof.kind = BenchCase::Kind::kRoof;
      roof.bf16 = bf16;
      roofs[bf16].push_back(RunInChild(roof, o));
    }
    BenchCase write;
    write.kind = BenchCase::Kind::kWriteRoof;
    write.mib = kWriteRoofMiB;
    write_roofs.push_back(RunInChild(write, o));
  };
  measure_roofs();
  json rows = json::array();
  for (const BenchCase& c : AttentionCases(o)) {
    json r = RunInChild(c, o);
    r["batch"] = c.shape.batch;
    r["length"] = c.shape.length;
    r["d_model"] = c.shape.d_model;
    r["heads"] = c.shape.heads;
    r["precision"] = c.bf16 ? "bf16" : "fp32";
    r["weights"] = c.per_head_weights ? "per-head" : "none";
    rows.push_back(r);
  }
  if (!o.quick) measure_roofs();
  result["roofs"] = {{"fp32", BestRoof(roofs[0])}, {"bf16", BestRoof(roofs[1])},
                     {"write", BestRoof(write_roofs)}};
  for (json& r : rows) {
    const double roof = result["roofs"][r["precision"].get<std::string>()].value("gflops", 0.0);
    if (r.contains("gflops") && roof > 0) r["roof_fraction"] = r["gflops"].get<double>() / roof;
  }
  result["rows"] = rows;
  result["threads"] = result["roofs"]["fp32"].value("threads", 0);
  const BenchCase ref{.kind = BenchCase::Kind::kReference, .shape = kReferenceShape};
  if (o.reference && !o.quick && Selected(ref, o)) result["reference"] = RunInChild(ref, o);
  result["load_average_end"] = LoadAverage();
  return result;
}

void PrintRoof(const char* precision, const char* what, const json& roof) {
  std::string measured;
  for (const json& g : roof.value("measured_gflops", json::array())) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.1f", measured.empty() ? "" : ", ", g.get<double>());
    measured += buf;
  }
  std::printf("roof %s: oneDNN matmul 2048^3 %s = %.1f GFLOP/s, %s (best of: %s)\n", precision,
              what, roof.value("gflops", 0.0), roof.value("impl", "?").c_str(),
              measured.c_str());
}

void PrintRow(const json& r) {
  std::printf("| %d | %d | %d | %d | %s | %s | ", r["batch"].get<int>(), r["length"].get<int>(),
              r["d_model"].get<int>(), r["heads"].get<int>(),
              r["precision"].get<std::string>().c_str(), r["weights"].get<std::string>().c_str());
  if (r.contains("error")) {
    std::printf("failed: %s | | | |\n", r["error"].get<std::string>().c_str());
    return;
  }
  std::printf("%.2f | %.1f | %.0f%% | %.1f |\n", r["ms"].get<double>(), r["gflops"].get<double>(),
              100 * r.value("roof_fraction", 0.0), r["peak_extra_mib"].get<double>());
}

// One row of the breakdown table: a stage's milliseconds and, for the
// matmuls, its rate.
void PrintBreakdownRow(const json& r, double write_gbs) {
  const json& b = r["breakdown"];
  auto cell = [&](const char* stage) {
    const double ms = b.value(stage, 0.0);
    const double gflops = b["gflops"].value(stage, 0.0);
    if (gflops > 0) {
      std::printf(" %.2f (%.0f) |", ms, gflops);
    } else {
      std::printf(" %.2f |", ms);
    }
  };
  std::printf("| %d | %d | %d | %d | %s | %s | %.2f |", r["batch"].get<int>(),
              r["length"].get<int>(), r["d_model"].get<int>(), r["heads"].get<int>(),
              r["precision"].get<std::string>().c_str(), r["weights"].get<std::string>().c_str(),
              b.value("total", 0.0));
  for (const char* stage : {"qkv_projection", "scores", "normalize", "context", "weights_out",
                            "attention_idle", "out_projection"}) {
    cell(stage);
  }
  std::printf(" %.2f |", b.value("pack", 0.0) + b.value("unpack", 0.0) + b.value("other", 0.0));
  if (r["weights"] == "per-head" && write_gbs > 0) {
    const double L = r["length"];
    const double bytes = r["batch"].get<double>() * r["heads"].get<double>() * L * L * sizeof(float);
    std::printf(" %.2f |\n", bytes / write_gbs / 1e6);
  } else {
    std::printf(" |\n");
  }
}

void PrintBreakdown(const json& result) {
  std::printf("\nWhere the time goes: mean ms per run of each stage, (GFLOP/s) for the matmuls. "
              "The attention steps (QK^T, mask+softmax, PV, weights out) run on all threads "
              "at once on different tasks: each is its thread-seconds / threads; idle = the "
              "attention stage's wall minus those (threads waiting for the last task). "
              "pack etc. = packing the input, copying outputs out, planning and allocating "
              "outputs. weights floor = the bytes of the returned weights at the fresh-memory "
              "write rate: the least returning them can add.\n\n");
  std::printf("| B | L | d_model | heads | precision | weights | total ms | Q,K,V projection "
              "| QK^T | mask+softmax | PV | weights out | idle | output projection | pack etc. "
              "| weights floor |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const double write_gbs = result["roofs"]["write"].value("gflops", 0.0);
  for (const json& r : result["rows"]) {
    if (r.contains("breakdown")) PrintBreakdownRow(r, write_gbs);
  }
}

void PrintTable(const json& result, const Options& o) {
  std::printf("attnserve core_bench: oneDNN engine, medians, %d threads (oneDNN %s, ISA %s)%s\n",
              result["threads"].get<int>(), result["onednn"].get<std::string>().c_str(),
              result["isa"].get<std::string>().c_str(), o.quick ? ", --quick" : "");
  std::printf("FLOPs per batch = 8*B*L*d^2 (Q, K, V, output projections) + 4*B*L^2*d "
              "(QK^T and PV, full L^2)\n");
  std::printf("load average %.1f at start, %.1f at end (2 cores; shared machines are noisy); "
              "OMP_WAIT_POLICY %s\n", result["load_average_start"].get<double>(),
              result["load_average_end"].get<double>(),
              result["omp_wait_policy"].get<std::string>().c_str());
  PrintRoof("fp32", "f32", result["roofs"]["fp32"]);
  PrintRoof("bf16", "bf16 in, f32 out", result["roofs"]["bf16"]);
  std::printf("fresh-memory write: allocating and writing %d MiB as the engine allocates returned "
              "weights = %.1f GB/s\n", kWriteRoofMiB,
              result["roofs"]["write"].value("gflops", 0.0));
  const json& check = result["memory_check"];
  std::printf("peak extra memory: peak RSS during the runs minus RSS with model, engine and "
              "inputs loaded, one process per row (check: after a %d MiB peak, touching %d MiB "
              "measures %.1f MiB%s)\n\n",
              2 * kMemoryCheckMiB,
              kMemoryCheckMiB, check.value("peak_extra_mib", -1.0),
              check.value("memory_reset_ok", false) ? "" : "; VmHWM reset FAILED");
  std::printf("| B | L | d_model | heads | precision | weights | ms | GFLOP/s | %% of roof | "
              "peak extra MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const json& r : result["rows"]) PrintRow(r);
  if (o.timing.breakdown) PrintBreakdown(result);
  if (!result.contains("reference")) return;
  const json& ref = result["reference"];
  for (const json& r : result["rows"]) {
    if (r["batch"] == kReferenceShape.batch && r["length"] == kReferenceShape.length &&
        r["d_model"] == kReferenceShape.d_model && r["precision"] == "fp32" &&
        r["weights"] == "none" && r.contains("ms") && ref.contains("ms")) {
      std::printf("\noneDNN engine vs reference engine on %s (fp32, no weights): %.1f ms vs "
                  "%.1f ms = %.0fx\n", ref["name"].get<std::string>().c_str(),
                  r["ms"].get<double>(), ref["ms"].get<double>(),
                  ref["ms"].get<double>() / r["ms"].get<double>());
    }
  }
}

}  // namespace
}  // namespace attnserve::bench

int main(int argc, char** argv) {
  using namespace attnserve::bench;
  Options o;
  CLI::App app{"attnserve core benchmark: the oneDNN engine against oneDNN's matmul roofs"};
  app.add_option("--format", o.format, "table (markdown) or json")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_flag("--quick", o.quick, "development mode: 3 runs, 0.1 s, roofs once, no reference");
  app.add_option("--filter", o.filter, "only rows whose name contains this, e.g. L8192 or bf16/none");
  app.add_flag("!--no-reference", o.reference, "skip the reference-engine comparison");
  app.add_option("--threads", o.timing.threads, "OpenMP threads; 0 = every core");
  app.add_option("--runs", o.timing.min_runs, "timed runs per row, at least")->check(CLI::PositiveNumber);
  app.add_option("--min-time", o.timing.min_seconds, "seconds of timed runs per row, at least");
  app.add_flag("--breakdown", o.timing.breakdown,
               "also time each stage (projections, QK^T, mask+softmax, PV, ...) and print "
               "where each row's time goes");
  app.add_option("--run-case", o.run_case, "internal: run one case, print its JSON")
      ->group("");
  CLI11_PARSE(app, argc, argv);
  if (!o.run_case.empty()) {
    const auto c = BenchCase::Parse(o.run_case);
    if (!c) {
      std::fprintf(stderr, "core_bench: bad --run-case %s\n", o.run_case.c_str());
      return 2;
    }
    std::cout << "\n" << RunCase(*c, o.timing).dump() << std::endl;
    return 0;
  }
  if (o.quick) {
    if (app.count("--runs") == 0) o.timing.min_runs = 3;
    if (app.count("--min-time") == 0) o.timing.min_seconds = 0.1;
  }
  const nlohmann::json result = RunAll(o);
  if (o.format == "json") {
    std::cout << result.dump(2) << std::endl;
  } else {
    PrintTable(result, o);
  }
  return 0;
}
