#include "core/onednn_engine.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <mutex>
#include <new>
#include <optional>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/attention_plan.h"
#include "core/engine_outputs.h"
#include "core/kernels.h"
#include "core/onednn_attention.h"
#include "core/positional.h"
#include "core/scratch.h"
#include "dnnl.hpp"

namespace attnserve::core {
namespace {

using dnnl::memory;
using dt = memory::data_type;
constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;

// Scratch buffers up to this size are kept for the next batch; larger ones
// (a rare huge batch) are freed after it so they do not pin memory.
constexpr size_t kRetainedScratchBytes = size_t{128} << 20;

size_t Bytes(dt type) { return type == dt::bf16 ? 2 : 4; }

// True when the CPU executes bf16 dot products natively (AVX512-BF16 or AMX);
// oneDNN's bf16 emulation on older CPUs is slower than fp32.
bool HasNativeBf16() {
  const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto need = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (have & need) == need;
}

// Elementwise conversion of n floats to bf16 on every thread.
void ToBf16Parallel(const float* src, uint16_t* dst, size_t n, int threads) {
  constexpr size_t kChunk = size_t{1} << 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; i += kChunk) {
    kernels::ToBf16(src + i, dst + i, std::min(kChunk, n - i));
  }
}

std::string IsaToString(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "isa_" + std::to_string(static_cast<int>(isa));
  }
}

}  // namespace

// One dense projection y = x W^T + b over a runtime number of rows, with the
// weights reordered once into the layout oneDNN picked for the primitive.
struct Projection {
  dnnl::matmul prim;
  memory weights;  // oneDNN's preferred layout, compute precision
  memory bias;     // 1 x out, f32
  dt src_type = dt::f32;  // input and weights
  dt dst_type = dt::f32;  // output (f32 accumulation either way)
  memory::dim in = 0, out = 0;
};

struct OneDnnEngine::Impl {
  // --- Constant after construction. ---
  std::shared_ptr<const Model> model;
  int num_threads = 1;
  bool profiling = false;
  size_t prefault_bytes = 0;
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::optional<Projection> qkv_proj, out_proj;
  std::unique_ptr<OneDnnAttention> attention;
  dt x_type = dt::f32;    // packed input (the QKV projection's input)
  dt qkv_type = dt::f32;  // packed Q/K/V (the attention matmuls' input)
  std::string compute_path;
  PlanOptions plan_options;
  std::vector<float> positions;  // max_length x d_model added to the input, or empty
  std::optional<RotaryTable> rotary;
  std::atomic<uint64_t> primitives_created{0};

  std::mutex mu;  // serializes Run; guards everything below
  dnnl::stream stream{eng};
  // Packed input x [T, d] (x_type); after the QKV projection it is dead and
  // holds the output projection's input or output instead (see RunLocked).
  ScratchBuffer x_buf;
  ScratchBuffer qkv_buf;  // [T, 3d], qkv_type: every key row of the plan
  // [Tq, 3d], qkv_type: the queries' own Q/K/V, when some session chunk has
  // cached keys to be copied before its rows in qkv_buf.
  ScratchBuffer new_qkv_buf;
  ScratchBuffer ctx_buf;  // [T, d] f32
  // Per-thread rows for the parallel regions (nothing is allocated inside
  // one: an exception there would be std::terminate): num_threads x d floats
  // (positions added, a rotated bf16 head), num_threads x d doubles (pooling).
  ScratchBuffer row_buf;
  ScratchBuffer sum_buf;
  EngineProfile profile;  // the engine's stages; the attention's own in `attention`

  absl::Status Init(const OneDnnEngineOptions& options);
  absl::Status CreatePrimitives(bool bf16);
  Projection MakeProjection(const std::vector<float>& weights_ab,
                            const std::vector<float>& bias, memory::dim in,
                            memory::dim out, dt src_type, dt dst_type);
  void Project(const Projection& p, const void* src, memory::dim rows, void* dst);
  void PackInput(const AttentionPlan& plan);
  void ComputeQkv(const AttentionPlan& plan);
  // Moves the queries' Q/K/V from new_qkv_buf to their rows of qkv_buf and
  // puts the cached keys and values of each chunk that returns weights
  // before them (the others' are read from their rings).
  void PlaceCachedKeys(const AttentionPlan& plan);
  // Stores each chunk's keys and values in its session's cache (the last
  // capacity of them) and advances it.
  void UpdateCaches(const AttentionPlan& plan);
  // A session cache's row: the key and value of one row (2d, qkv_type).
  size_t kv_row_bytes() const { return 2 * size_t{model->config.d_model} * Bytes(qkv_type); }
  // Computes `batch` into `outs`, pre-sized by AllocateOutputs
  // (engine_outputs.h). Throws
  // dnnl::error or std::bad_alloc.
  void Compute(std::span<const SequenceInput> batch, std::vector<SequenceOutput>& outs);
  // Allocates every sequence's outputs (a sequence whose allocation fails
  // gets RESOURCE_EXHAUSTED alone) and computes the others. Throws as Compute.
  std::vector<SequenceOutput> RunLocked(std::span<const SequenceInput> batch);
};

Projection OneDnnEngine::Impl::MakeProjection(const std::vector<float>& weights_ab,
                                              const std::vector<float>& bias,
                                              memory::dim in, memory::dim out,
                                              dt src_type, dt dst_type) {
  Projection p;
  p.src_type = src_type;
  p.dst_type = dst_type;
  p.in = in;
  p.out = out;
  const auto src_md = memory::desc({kRuntime, in}, src_type, {in, 1});
  const auto w_any = memory::desc({in, out}, src_type, memory::format_tag::any);
  const auto b_md = memory::desc({1, out}, dt::f32, {out, 1});
  const auto dst_md = memory::desc({kRuntime, out}, dst_type, {out, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::library);
  auto pd = dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(src_md, w_any, b_md, dst_md), attr, eng);
  if (std::string impl = pd.impl_info_str(); impl.rfind("ref", 0) == 0) {
    throw dnnl::error(dnnl_unimplemented, ("only the reference matmul (" + impl +
                                           ") for the projections").c_str());
  }
  p.prim = dnnl::matmul(pd);
  ++primitives_created;
  // Reorder the plain weights (K x N, f32) into the layout and type the
  // primitive wants (bf16 weights are rounded here, once); never per call.
  memory plain(memory::desc({in, out}, dt::f32, {out, 1}), eng,
               const_cast<float*>(weights_ab.data()));
  p.weights = memory(pd.weights_desc(), eng);
  {
    // Once, on the creating thread alone. A parallel region here would give
    // that thread an OpenMP pool of its own beside the one of the thread that
    // runs batches; with more pooled threads than CPUs libgomp stops
    // spinning between regions, and every region of every batch then wakes
    // its workers through the kernel (measured: 4,000 context switches per
    // 2,000 regions, +40 us each; the server's c=1 compute 0.86 ms against
    // 0.46 offline). Only the execution: the primitives above are created
    // for the engine's thread count.
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    absl::Cleanup restore = [threads] { omp_set_num_threads(threads); };
    dnnl::stream s(eng);
    dnnl::reorder(plain, p.weights).execute(s, plain, p.weights);
    s.wait();
  }
  primitives_created += 1;
  p.bias = memory(b_md, eng);
  std::copy(bias.begin(), bias.end(), static_cast<float*>(p.bias.get_data_handle()));
  return p;
}

// Creates the projections and the attention stage in bf16 or fp32. bf16:
// projections take bf16 input and weights; with dot relevance Q/K/V and the
// weights enter the attention matmuls as bf16 too (additive relevance has no
// Q.K^T matmul: its tanh scores need f32 q and k, so it keeps them f32).
absl::Status OneDnnEngine::Impl::CreatePrimitives(bool bf16) {
  const ModelConfig& c = model->config;
  const ModelWeights& w = model->weights;
  const bool attention_bf16 = bf16 && c.relevance == Relevance::kDot;
  qkv_type = attention_bf16 ? dt::bf16 : dt::f32;
  x_type = c.projections ? (bf16 ? dt::bf16 : dt::f32) : qkv_type;
  qkv_proj.reset();
  out_proj.reset();
  if (c.projections) {
    const memory::dim d = c.d_model;
    // x W^T needs W^T (d_in x d_out) row-major: transpose PyTorch's [out, in].
    std::vector<float> qkv_t(d * 3 * d), out_t(d * d), qkv_b(3 * d);
    const std::vector<float>* parts[3] = {&w.q_weight, &w.k_weight, &w.v_weight};
    const std::vector<float>* biases[3] = {&w.q_bias, &w.k_bias, &w.v_bias};
    for (int part = 0; part < 3; ++part) {
      for (memory::dim o = 0; o < d; ++o) {
        for (memory::dim i = 0; i < d; ++i) {
          qkv_t[i * 3 * d + part * d + o] = (*parts[part])[o * d + i];
        }
        qkv_b[part * d + o] = (*biases[part])[o];
      }
    }
    for (memory::dim o = 0; o < d; ++o) {
      for (memory::dim i = 0; i < d; ++i) out_t[i * d + o] = w.out_weight[o * d + i];
    }
    try {
      qkv_proj = MakeProjection(qkv_t, qkv_b, d, 3 * d, x_type, qkv_type);
      out_proj = MakeProjection(out_t, w.out_bias, d, d, x_type, dt::f32);
    } catch (const dnnl::error& e) {
      return absl::InternalError(absl::StrCat("oneDNN has no ", bf16 ? "bf16" : "f32",
                                              " projection matmul here: ", e.what()));
    }
  }
  absl::StatusOr<std::unique_ptr<OneDnnAttention>> a =
      OneDnnAttention::Create(model, eng, attention_bf16, num_threads, profiling);
  if (!a.ok()) return a.status();
  attention = *std::move(a);
  primitives_created += attention->primitives_created();
  plan_options.batch_ring_heads = attention->batches_ring_heads();
  return absl::OkStatus();
}

absl::Status OneDnnEngine::Impl::Init(const OneDnnEngineOptions& options) {
  const ModelConfig& c = model->config;
  num_threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  // OMP_THREAD_LIMIT caps every OpenMP team, but not what oneDNN plans for:
  // asked for more threads than may run, its primitives split the work for
  // all of them, fewer run, and part of every output is never computed. So
  // never ask for more than the limit.
  const int thread_limit = omp_get_thread_limit();
  const bool capped = num_threads > thread_limit;
  if (capped) num_threads = thread_limit;
  profiling = options.profile;
  prefault_bytes = options.prefault_bytes;
  profile.threads = num_threads;
  plan_options.block_floats = options.score_block_floats;
  plan_options.key_tile = options.key_tile;
  plan_options.max_rows = options.block_rows;
  plan_options.min_tasks = 4 * size_t(num_threads);  // room for dynamic balancing
  plan_options.threads = size_t(num_threads);
  const std::string isa = IsaToString(dnnl::get_effective_cpu_isa());
  compute_path = absl::StrCat("fp32 (", isa, ")");
  bool done = false;
  if (c.precision == Precision::kBf16) {
    if (!HasNativeBf16()) {
      compute_path = absl::StrCat("fp32 (bf16 requested; ", isa, " has no native bf16)");
    } else if (!c.projections && c.relevance == Relevance::kAdditive) {
      // No projections, and additive scores need f32 q and k: nothing left.
      compute_path = absl::StrCat("fp32 (bf16 requested; ", isa,
                                  ": no bf16 matmul in a parameter-free additive model)");
    } else if (absl::Status st = CreatePrimitives(/*bf16=*/true); st.ok()) {
      const bool attention_bf16 = attention->bf16();
      compute_path = absl::StrCat("bf16 (", isa, "; ", c.projections ? "projections" : "",
                                  c.projections && attention_bf16 ? " and " : "",
                                  attention_bf16 ? "attention" : "", ")");
      done = true;
    } else {
      compute_path = absl::StrCat("fp32 (bf16 requested; ", st.message(), ")");
    }
  }
  if (!done) {
    if (absl::Status st = CreatePrimitives(/*bf16=*/false); !st.ok()) return st;
  }
  if (capped) {
    absl::StrAppend(&compute_path, "; ", num_threads, " thread(s), capped by OMP_THREAD_LIMIT");
  }
  if (c.positional == Positional::kSinusoidal) {
    positions = SinusoidalTable(c.max_length, c.d_model);
  } else if (c.positional == Positional::kLearned) {
    positions = model->weights.pos_embedding;
  } else if (c.positional == Positional::kRotary) {
    rotary.emplace(c.max_length, c.d_head());
  }
  return absl::OkStatus();
}

void OneDnnEngine::Impl::Project(const Projection& p, const void* src, memory::dim rows,
                                 void* dst) {
  memory src_mem(RowMajor(rows, p.in, p.in, p.src_type), eng, const_cast<void*>(src));
  memory dst_mem(RowMajor(rows, p.out, p.out, p.dst_type), eng, dst);
  p.prim.execute(stream, {{DNNL_ARG_SRC, src_mem},
                          {DNNL_ARG_WEIGHTS, p.weights},
                          {DNNL_ARG_BIAS, p.bias},
                          {DNNL_ARG_DST, dst_mem}});
  stream.wait();
}

// Packs every sequence end to end into x_buf (x_type), adding the positional
// encoding. Rows of every sequence are shared among the threads, so one long
// sequence packs as fast as many short ones; a small batch (a session's
// chunk, a short request) packs on this thread alone, which costs less than
// waking the others for a few microseconds of copying.
void OneDnnEngine::Impl::PackInput(const AttentionPlan& plan) {
  constexpr size_t kParallelPackFloats = size_t{1} << 16;  // as UnpackOutputs
  const size_t d = model->config.d_model;
  void* x = x_buf.Reserve(plan.total_queries * d * Bytes(x_type));
  float* rows = row_buf.ReserveAs<float>(size_t(num_threads) * d);
#pragma omp parallel num_threads(num_threads) if (plan.total_queries * d >= kParallelPackFloats)
  {
    float* row = rows + size_t(omp_get_thread_num()) * d;
    for (const SequencePlan& sp : plan.seqs) {
      const uint64_t base = sp.FirstPosition();
#pragma omp for schedule(static) nowait
      for (uint32_t p = 0; p < sp.queries(); ++p) {
        const float* src = sp.input->data.data() + size_t{p} * d;
        if (!positions.empty()) {  // validated: base + p < max_length
          const float* pe = &positions[(base + p) * d];
          for (size_t k = 0; k < d; ++k) row[k] = src[k] + pe[k];
          src = row;
        }
        const size_t at = (sp.out_offset + p) * d;
        if (x_type == dt::bf16) {
          kernels::ToBf16(src, static_cast<uint16_t*>(x) + at, d);
        } else {
          std::copy_n(src, d, static_cast<float*>(x) + at);
        }
      }
    }
  }
}

// Q, K, V for every token at once into qkv_buf [T, 3d] (qkv_type), then the
// rotary encoding of q and k.
void OneDnnEngine::Impl::ComputeQkv(const AttentionPlan& plan) {
  const ModelConfig& c = model->config;
  const size_t d = c.d_model, T = plan.total_queries, elem = Bytes(qkv_type);
  // Without cached keys the queries are every key row, in order: project
  // straight into place.
  ScratchBuffer& dst = plan.has_cached_keys ? new_qkv_buf : qkv_buf;
  char* qkv = static_cast<char*>(dst.Reserve(T * 3 * d * elem));
  const char* x = static_cast<const char*>(x_buf.Reserve(0));
  if (qkv_proj) {
    Project(*qkv_proj, x, T, qkv);
  } else {  // parameter-free: Q = K = V = X (x_type == qkv_type)
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (size_t t = 0; t < T; ++t) {
      for (int part = 0; part < 3; ++part) {
        std::copy_n(x + t * d * elem, d * elem, qkv + (t * 3 + part) * d * elem);
      }
    }
  }
  if (!rotary) return;
  const uint32_t dh = c.d_head();
  float* heads = row_buf.ReserveAs<float>(size_t(num_threads) * d);  // d >= dh per thread
#pragma omp parallel num_threads(num_threads)
  {
    float* head = heads + size_t(omp_get_thread_num()) * d;
    for (const SequencePlan& sp : plan.seqs) {
      const uint64_t base = sp.FirstPosition();  // absolute
#pragma omp for schedule(static) nowait
      for (uint32_t p = 0; p < sp.queries(); ++p) {
        const size_t row = (sp.out_offset + p) * 3 * d;
        for (uint32_t h = 0; h < 2 * c.num_heads; ++h) {  // q heads, then k heads
          const size_t at = row + h * dh;
          if (qkv_type == dt::f32) {
            rotary->Apply(reinterpret_cast<float*>(qkv) + at, base + p);
          } else {  // rotate in f32, round once
            uint16_t* v = reinterpret_cast<uint16_t*>(qkv) + at;
            kernels::FromBf16(v, head, dh);
            rotary->Apply(head, base + p);
            kernels::ToBf16(head, v, dh);
          }
        }
      }
    }
  }
}

void OneDnnEngine::Impl::PlaceCachedKeys(const AttentionPlan& plan) {
  const size_t kv_bytes = kv_row_bytes(), row_bytes = kv_bytes / 2 * 3;  // q | k | v
  char* qkv = static_cast<char*>(qkv_buf.Reserve(plan.total_tokens * row_bytes));
  const char* fresh = static_cast<const char*>(new_qkv_buf.Reserve(0));
#pragma omp parallel num_threads(num_threads)
  for (const SequencePlan& sp : plan.seqs) {
#pragma omp for schedule(static) nowait
    for (uint32_t j = sp.packed_key0(); j < sp.length; ++j) {  // read from a ring: not here
      char* dst = qkv + sp.PackedRow(j) * row_bytes;
      if (j < sp.first_query) {  // cached: its q is never read
        std::memcpy(dst + row_bytes / 3, sp.CachedRow(j), kv_bytes);
      } else {
        std::memcpy(dst, fresh + (sp.out_offset + j - sp.first_query) * row_bytes, row_bytes);
      }
    }
  }
}

void OneDnnEngine::Impl::UpdateCaches(const AttentionPlan& plan) {
  const size_t kv_bytes = kv_row_bytes(), row_bytes = kv_bytes / 2 * 3;
  const char* qkv = static_cast<const char*>(qkv_buf.Reserve(0));
  for (const SequencePlan& sp : plan.seqs) {
    KvCache* cache = sp.input->cache;
    if (cache == nullptr) continue;
    // Rows older than the last capacity would be overwritten in the ring
    // by newer ones of the same chunk: skip them.
    const uint32_t n = sp.queries();
    const uint32_t first = n > cache->capacity() ? n - cache->capacity() : 0;
    for (uint32_t p = first; p < n; ++p) {
      const char* src = qkv + sp.PackedRow(sp.first_query + p) * row_bytes + row_bytes / 3;
      std::memcpy(cache->Row(cache->positions() + p), src, kv_bytes);
    }
    cache->Advance(n);
  }
}

std::vector<SequenceOutput> OneDnnEngine::Impl::RunLocked(std::span<const SequenceInput> batch) {
  std::vector<SequenceOutput> outs(batch.size());
  std::vector<size_t> live;  // sequences whose outputs could be allocated
  live.reserve(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    try {
      AllocateOutputs(model->config, batch[s], outs[s]);
      live.push_back(s);
    } catch (const std::bad_alloc&) {
      outs[s].status = absl::ResourceExhaustedError(absl::StrCat(
          "out of memory for this sequence's outputs (", SequenceBytes(model->config, batch[s]),
          " bytes with its input; L = ", batch[s].length, "); the rest of its batch was computed"));
    }
  }
  if (live.size() == batch.size()) {
    Compute(batch, outs);
  } else if (!live.empty()) {  // the others, as a batch of their own
    std::vector<SequenceInput> inputs;
    std::vector<SequenceOutput> live_outs;
    inputs.reserve(live.size());
    live_outs.reserve(live.size());
    for (size_t s : live) {
      inputs.push_back(batch[s]);
      live_outs.push_back(std::move(outs[s]));
    }
    Compute(inputs, live_outs);
    for (size_t i = 0; i < live.size(); ++i) outs[live[i]] = std::move(live_outs[i]);
  }
  return outs;
}

void OneDnnEngine::Impl::Compute(std::span<const SequenceInput> batch,
                                 std::vector<SequenceOutput>& outs) {
  const ModelConfig& c = model->config;
  const size_t d = c.d_model;
  // oneDNN sizes its own parallel regions from the calling thread's OpenMP
  // setting (a per-thread value), so set it here, on the thread that runs.
  omp_set_num_threads(num_threads);
  // On every exit: a huge batch's buffers are not kept for the next one.
  absl::Cleanup trim = [this] {
    for (ScratchBuffer* b : {&x_buf, &qkv_buf, &new_qkv_buf, &ctx_buf}) {
      b->Trim(kRetainedScratchBytes);
    }
    attention->TrimScratch(kRetainedScratchBytes);
  };
  StageClock total(profiling), clock(profiling);
  double other = 0;  // planning: total minus the stages
  const AttentionPlan plan = MakeAttentionPlan(batch, c.num_heads, plan_options);
  const size_t T = plan.total_queries;
  // 1-2. Pack the input, project to Q, K, V (of the queries: a session's
  // cached rows were projected with their own chunk).
  clock.Lap(other);
  PackInput(plan);
  clock.Lap(profile.pack);
  ComputeQkv(plan);
  if (plan.has_cached_keys) PlaceCachedKeys(plan);
  clock.Lap(profile.qkv_projection);
  // 3. Attention per (sequence, row block, head) -> context [T, d].
  PrefaultLargeOutputs(outs, prefault_bytes, num_threads);
  float* ctx = ctx_buf.ReserveAs<float>(T * d);
  clock.Lap(other);
  attention->Run(plan, qkv_buf.Reserve(0), ctx, outs);
  clock.Lap(profile.attention);
  // 4. Output projection over every token at once. x_buf is free again: it
  // takes the output (f32), or in bf16 the rounded context, with the output
  // written over the f32 context.
  const float* y = ctx;
  if (out_proj) {
    if (out_proj->src_type == dt::bf16) {
      uint16_t* ctx16 = x_buf.ReserveAs<uint16_t>(T * d);
      ToBf16Parallel(ctx, ctx16, T * d, num_threads);
      Project(*out_proj, ctx16, T, ctx);
    } else {
      float* out = x_buf.ReserveAs<float>(T * d);
      Project(*out_proj, ctx, T, out);
      y = out;
    }
  }
  clock.Lap(profile.out_projection);
  // 5. Unpack (into the caller's buffers where given), pooling where asked.
  UnpackOutputs(batch, plan, y, d, num_threads, sum_buf.ReserveAs<double>(size_t(num_threads) * d),
                outs);
  // Last, once nothing can fail: a chunk that is not computed leaves its
  // session's cache as it was.
  UpdateCaches(plan);
  clock.Lap(profile.unpack);
  if (profiling) ++profile.runs;
  total.Lap(profile.total);
}

OneDnnEngine::OneDnnEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnEngine::~OneDnnEngine() = default;

absl::StatusOr<std::unique_ptr<OneDnnEngine>> OneDnnEngine::Create(
    std::shared_ptr<const Model> model, const OneDnnEngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("model is null");
  absl::Status st = ValidateModelConfig(model->config, model->name);
  if (st.ok()) st = ValidateModelWeights(model->config, model->weights, model->name);
  if (!st.ok()) return st;
  if (options.score_block_floats < 64 || options.key_tile < 1 || options.num_threads < 0 ||
      options.block_rows < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "OneDnnEngineOptions: num_threads must be >= 0, score_block_floats >= 64, "
        "key_tile >= 1 and block_rows >= 8; were ", options.num_threads, ", ",
        options.score_block_floats, ", ", options.key_tile, " and ", options.block_rows));
  }
  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  try {
    st = impl->Init(options);
  } catch (const dnnl::error& e) {
    st = absl::InternalError(absl::StrCat("oneDNN setup failed: ", e.what()));
  } catch (const std::bad_alloc&) {
    st = absl::ResourceExhaustedError("out of memory setting up the attention engine");
  }
  if (!st.ok()) return st;
  return std::unique_ptr<OneDnnEngine>(new OneDnnEngine(std::move(impl)));
}

const Model& OneDnnEngine::model() const { return *impl_->model; }

absl::StatusOr<std::vector<SequenceOutput>> OneDnnEngine::Run(
    std::span<const SequenceInput> batch) {
  if (absl::Status st = ValidateBatch(impl_->model->config, batch); !st.ok()) return st;
  for (size_t s = 0; s < batch.size(); ++s) {
    const KvCache* cache = batch[s].cache;
    if (cache != nullptr && cache->row_bytes() != KvRowBytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s, ": its session cache has rows of ", cache->row_bytes(),
          " bytes; this engine's are ", KvRowBytes()));
    }
  }
  std::lock_guard<std::mutex> lock(impl_->mu);
  // The one place exceptions from oneDNN or allocation are turned into
  // status. The engine stays usable: scratch buffers are either whole or
  // empty, and every batch re-plans and rewrites all it reads.
  try {
    return impl_->RunLocked(batch);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "attention engine: out of memory for the batch's intermediates (",
        batch.size(), " sequences)"));
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("attention engine: oneDNN error: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("attention engine failed: ", e.what()));
  }
}

uint64_t OneDnnEngine::primitives_created() const { return impl_->primitives_created; }

size_t OneDnnEngine::KvRowBytes() const { return impl_->kv_row_bytes(); }

std::string OneDnnEngine::compute_path() const { return impl_->compute_path; }

EngineProfile OneDnnEngine::TakeProfile() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  EngineProfile p = impl_->profile;
  impl_->attention->TakeProfile(p);
  impl_->profile = {};
  impl_->profile.threads = impl_->num_threads;
  return p;
}

std::string OneDnnEngine::IsaName() { return IsaToString(dnnl::get_effective_cpu_isa()); }

}  // namespace attnserve::core
