#include "bench/bench_case.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <vector>

#include "bench/peak_memory.h"
#include "core/engine.h"
#include "core/onednn_engine.h"
#include "dnnl.hpp"

namespace attnserve::bench {
namespace {

using core::Model;
using core::SequenceInput;
using core::WeightsMode;
using nlohmann::json;

constexpr double kMiB = 1024.0 * 1024.0;
constexpr long kRoofN = 2048;  // the roof matmul is kRoofN³

// B sequences of length L with uniform(-1, 1) values.
struct Inputs {
  std::vector<float> data;
  std::vector<SequenceInput> seqs;
  Inputs(const Shape& s, bool per_head_weights) {
    std::mt19937 rng(2);
    std::uniform_real_distribution<float> u(-1, 1);
    const size_t n = size_t(s.length) * s.d_model;
    data.resize(n * s.batch);
    for (float& x : data) x = u(rng);
    for (int b = 0; b < s.batch; ++b) {
      SequenceInput in;
      in.data = std::span<const float>(data).subspan(b * n, n);
      in.length = s.length;
      in.weights = per_head_weights ? WeightsMode::kPerHead : WeightsMode::kNone;
      seqs.push_back(in);
    }
  }
};

// One warm-up run (unless min_runs == 1, for the slow reference engine), then
// runs until both minimums are met. Returns the median wall time in seconds
// and sets *runs to the number of timed runs.
double MedianSeconds(const std::function<void()>& fn, const TimingOptions& t, int* runs) {
  using Clock = std::chrono::steady_clock;
  if (t.min_runs > 1) fn();
  std::vector<double> times;
  const auto start = Clock::now();
  while (int(times.size()) < t.min_runs ||
         std::chrono::duration<double>(Clock::now() - start).count() < t.min_seconds) {
    const auto t0 = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  *runs = int(n);
  return n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

json Timed(const std::function<void()>& fn, const TimingOptions& t, double flops) {
  PeakMemoryWindow window;
  int runs = 0;
  const double seconds = MedianSeconds(fn, t, &runs);
  return {{"ms", seconds * 1e3},
          {"runs", runs},
          {"gflops", flops / seconds / 1e9},
          {"peak_extra_mib", window.PeakExtraBytes() / kMiB},
          {"memory_reset_ok", window.reset_ok()}};
}

// Milliseconds per run of each stage of `p` (see core::EngineProfile): the
// engine's stages as wall time, the attention steps as their share of it;
// and under "gflops", the rate of each matmul stage on shape `s`.
json BreakdownJson(const core::EngineProfile& p, const Shape& s) {
  const double ms = p.runs > 0 ? 1e3 / p.runs : 0;
  const double step_ms = ms / p.threads;
  const double steps = p.scores + p.normalize + p.context + p.weights_out;
  const double B = s.batch, L = s.length, d = s.d_model;
  auto gflops = [](double flops, double seconds) {
    return seconds > 0 ? flops / seconds / 1e9 : 0.0;
  };
  const double per_run = p.runs > 0 ? 1.0 / p.runs : 0, per_step = per_run / p.threads;
  const json rates = {{"qkv_projection", gflops(6 * B * L * d * d, p.qkv_projection * per_run)},
                      {"scores", gflops(2 * B * L * L * d, p.scores * per_step)},
                      {"context", gflops(2 * B * L * L * d, p.context * per_step)},
                      {"out_projection", gflops(2 * B * L * d * d, p.out_projection * per_run)}};
  return {{"runs", p.runs},
          {"gflops", rates},
          {"total", p.total * ms},
          {"pack", p.pack * ms},
          {"qkv_projection", p.qkv_projection * ms},
          {"scores", p.scores * step_ms},
          {"normalize", p.normalize * step_ms},
          {"context", p.context * step_ms},
          {"weights_out", p.weights_out * step_ms},
          {"attention_idle", (p.attention - steps / p.threads) * ms},
          {"out_projection", p.out_projection * ms},
          {"unpack", p.unpack * ms},
          {"other", p.other() * ms}};
}

json RunEngineCase(const BenchCase& c, const TimingOptions& t) {
  const auto model = BenchModel(c.shape, c.bf16);
  absl::StatusOr<std::unique_ptr<core::Engine>> engine;
  core::OneDnnEngine* onednn_engine = nullptr;
  if (c.kind == BenchCase::Kind::kReference) {
    engine = core::CreateReferenceEngine(model);
  } else {
    auto onednn =
        core::OneDnnEngine::Create(model, {.num_threads = t.threads, .profile = t.breakdown});
    if (onednn.ok()) {
      onednn_engine = onednn->get();
      engine = std::move(*onednn);
    } else {
      engine = onednn.status();
    }
  }
  if (!engine.ok()) throw std::runtime_error(engine.status().ToString());
  Inputs in(c.shape, c.per_head_weights);
  core::Engine& e = **engine;
  int calls = 0;
  json r = Timed([&] {
    auto out = e.Run(in.seqs);
    if (!out.ok()) throw std::runtime_error(out.status().ToString());
    // The warm-up run (the first, when there is one) is not in the profile.
    if (++calls == 1 && t.min_runs > 1 && onednn_engine) onednn_engine->TakeProfile();
  }, t, AttentionFlops(c.shape));
  if (t.breakdown && onednn_engine) r["breakdown"] = BreakdownJson(onednn_engine->TakeProfile(), c.shape);
  return r;
}

// The roof: one kRoofN³ matmul, primitive created once, weights in the layout
// oneDNN prefers (the best case for any GEMM-bound code here). bf16 takes
// bf16 inputs and writes f32, like the engine's bf16 projections.
json RunRoofCase(const BenchCase& c, const TimingOptions& t) {
  using dnnl::memory;
  using dt = memory::data_type;
  const memory::dim n = kRoofN;
  const dt in_type = c.bf16 ? dt::bf16 : dt::f32;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(eng);
  const auto a_md = memory::desc({n, n}, in_type, memory::format_tag::ab);
  const auto b_md = memory::desc({n, n}, in_type, memory::format_tag::any);
  const auto c_md = memory::desc({n, n}, dt::f32, memory::format_tag::ab);
  auto pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), eng);
  memory a(a_md, eng), b(pd.weights_desc(), eng), out(c_md, eng);
  // Any finite data: the timing does not depend on the values.
  for (memory* m : {&a, &b}) {
    std::memset(m->get_data_handle(), 0x3c, m->get_desc().get_size());
  }
  dnnl::matmul prim(pd);
  json r = Timed([&] {
    prim.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, out}});
    stream.wait();
  }, t, 2.0 * n * n * n);
  r["impl"] = pd.impl_info_str();
  return r;
}

// The memory roof for returning weights: allocate a fresh buffer the way the
// engine allocates weights matrices (core::WeightsMatrix: mapped pages,
// transparent huge pages where the kernel has them), write every byte on all
// threads, free it. "gflops" is GB/s.
json RunWriteRoof(const BenchCase& c, const TimingOptions& t) {
  const size_t floats = size_t(c.mib) * 1024 * 1024 / sizeof(float);
  return Timed([&] {
    core::WeightsMatrix m(floats);
    float* data = m.data();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < floats; i += 4096) {
      std::fill_n(data + i, std::min<size_t>(4096, floats - i), 1.0f);
    }
  }, t, double(floats * sizeof(float)));
}

// Touches `mib` MiB, then frees it.
void TouchAndFree(int mib) {
  std::vector<char> block(size_t(mib) * 1024 * 1024);
  std::memset(block.data(), 1, block.size());
  volatile char sink = block[block.size() / 2];
  (void)sink;
}

// Checks the memory method itself: after an earlier, larger peak (2N MiB,
// freed), touching and freeing N MiB inside the window must read as ~N MiB:
// the window forgets earlier peaks and keeps transient ones.
json RunMemoryCheck(const BenchCase& c) {
  TouchAndFree(2 * c.mib);
  PeakMemoryWindow window;
  TouchAndFree(c.mib);
  return {{"touched_mib", c.mib},
          {"peak_extra_mib", window.PeakExtraBytes() / kMiB},
          {"memory_reset_ok", window.reset_ok()}};
}

}  // namespace

// A random model with projections; `bf16` sets the compute precision, which
// the engine honours wherever it has a bf16 path.
std::shared_ptr<const core::Model> BenchModel(const Shape& s, bool bf16) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  auto m = std::make_shared<core::Model>();
  m->name = "bench";
  m->config.d_model = s.d_model;
  m->config.num_heads = s.heads;
  m->config.max_length = s.length;
  m->config.precision = bf16 ? core::Precision::kBf16 : core::Precision::kFp32;
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

double AttentionFlops(const Shape& s) {
  const double B = s.batch, L = s.length, d = s.d_model;
  return 8 * B * L * d * d + 4 * B * L * L * d;
}

std::string BenchCase::Name() const {
  char buf[96];
  const Shape& s = shape;
  switch (kind) {
    case Kind::kRoof: return bf16 ? "roof/bf16" : "roof/fp32";
    case Kind::kMemoryCheck: return "memory_check/" + std::to_string(mib) + "MiB";
    case Kind::kWriteRoof: return "write_roof/" + std::to_string(mib) + "MiB";
    case Kind::kReference:
      std::snprintf(buf, sizeof buf, "reference/B%d_L%d_d%d_h%d", s.batch, s.length,
                    s.d_model, s.heads);
      return buf;
    case Kind::kAttention: break;
  }
  std::snprintf(buf, sizeof buf, "B%d_L%d_d%d_h%d/%s/%s", s.batch, s.length, s.d_model,
                s.heads, bf16 ? "bf16" : "fp32", per_head_weights ? "per-head" : "none");
  return buf;
}

std::string BenchCase::Spec() const {
  const Shape& s = shape;
  const std::string dims = std::to_string(s.batch) + "," + std::to_string(s.length) + "," +
                           std::to_string(s.d_model) + "," + std::to_string(s.heads);
  const std::string precision = bf16 ? "bf16" : "fp32";
  switch (kind) {
    case Kind::kRoof: return "roof:" + precision;
    case Kind::kMemoryCheck: return "memcheck:" + std::to_string(mib);
    case Kind::kWriteRoof: return "writeroof:" + std::to_string(mib);
    case Kind::kReference: return "reference:" + dims;
    case Kind::kAttention: break;
  }
  return "attention:" + dims + ":" + precision + ":" + (per_head_weights ? "per-head" : "none");
}

std::optional<BenchCase> BenchCase::Parse(std::string_view spec) {
  BenchCase c;
  char precision[8] = {}, weights[16] = {};
  Shape& s = c.shape;
  const std::string text(spec);
  if (std::sscanf(text.c_str(), "attention:%d,%d,%d,%d:%7[a-z0-9]:%15[a-z-]", &s.batch,
                  &s.length, &s.d_model, &s.heads, precision, weights) == 6) {
    c.kind = Kind::kAttention;
    c.bf16 = std::strcmp(precision, "bf16") == 0;
    c.per_head_weights = std::strcmp(weights, "per-head") == 0;
    if (!c.bf16 && std::strcmp(precision, "fp32") != 0) return std::nullopt;
    if (!c.per_head_weights && std::strcmp(weights, "none") != 0) return std::nullopt;
  } else if (std::sscanf(text.c_str(), "reference:%d,%d,%d,%d", &s.batch, &s.length,
                         &s.d_model, &s.heads) == 4) {
    c.kind = Kind::kReference;
  } else if (std::sscanf(text.c_str(), "roof:%7[a-z0-9]", precision) == 1) {
    c.kind = Kind::kRoof;
    c.bf16 = std::strcmp(precision, "bf16") == 0;
    if (!c.bf16 && std::strcmp(precision, "fp32") != 0) return std::nullopt;
  } else if (std::sscanf(text.c_str(), "memcheck:%d", &c.mib) == 1) {
    c.kind = Kind::kMemoryCheck;
  } else if (std::sscanf(text.c_str(), "writeroof:%d", &c.mib) == 1) {
    c.kind = Kind::kWriteRoof;
  } else {
    return std::nullopt;
  }
  if (s.batch < 1 || s.length < 1 || s.heads < 1 || s.d_model < s.heads) return std::nullopt;
  return c;
}

json RunCase(const BenchCase& c, const TimingOptions& timing) {
  json r;
  if (timing.threads > 0) omp_set_num_threads(timing.threads);
  try {
    switch (c.kind) {
      case BenchCase::Kind::kAttention: r = RunEngineCase(c, timing); break;
      case BenchCase::Kind::kReference: {
        TimingOptions once = timing;
        once.min_runs = 1;  // seconds per run; one is enough for a ratio
        once.min_seconds = 0;
        r = RunEngineCase(c, once);
        break;
      }
      case BenchCase::Kind::kRoof: r = RunRoofCase(c, timing); break;
      case BenchCase::Kind::kMemoryCheck: r = RunMemoryCheck(c); break;
      case BenchCase::Kind::kWriteRoof: r = RunWriteRoof(c, timing); break;
    }
  } catch (const std::exception& e) {
    r = {{"error", e.what()}};
  }
  r["name"] = c.Name();
  r["threads"] = omp_get_max_threads();
  return r;
}

}  // namespace attnserve::bench
