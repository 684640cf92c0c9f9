#include "core/onednn_engine.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/attention_plan.h"
#include "core/kernels.h"
#include "core/positional.h"
#include "core/safetensors.h"
#include "dnnl.hpp"

namespace attnserve::core {
namespace {

using dnnl::memory;
using dt = memory::data_type;
constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;

// Score-block budget per thread: rows x keys floats kept within ~1 MiB so a
// block stays in L2 between the Q.K^T matmul, the normalization and P.V.
constexpr size_t kScoreBlockFloats = size_t{1} << 18;
constexpr uint32_t kMaxBlockRows = 64;
constexpr uint32_t kMinBlockRows = 8;

// A matrix in caller memory: rows x cols with row stride `ld` (elements).
memory::desc RowMajor(memory::dim rows, memory::dim cols, memory::dim ld,
                      dt type = dt::f32) {
  return memory::desc({rows, cols}, type, {ld, 1});
}
// The transpose view of a row-major rows x cols matrix: cols x rows.
memory::desc Transposed(memory::dim rows, memory::dim cols, memory::dim ld) {
  return memory::desc({cols, rows}, dt::f32, {1, ld});
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
  dt src_type = dt::f32;
  memory::dim in = 0, out = 0;
};

struct OneDnnEngine::Impl {
  // --- Constant after construction. ---
  std::shared_ptr<const Model> model;
  int num_threads = 1;
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::optional<Projection> qkv_proj, out_proj;
  dnnl::matmul scores_prim;   // S = scale * Q K^T, every dim and stride runtime
  dnnl::matmul context_prim;  // C = P V, every dim and stride runtime
  std::vector<float> positions;  // max_length x d_model added to the input, or empty
  std::optional<RotaryTable> rotary;
  std::atomic<uint64_t> primitives_created{0};

  std::mutex mu;  // serializes Run; guards everything below
  std::vector<dnnl::stream> streams;          // one per OpenMP thread
  std::vector<std::vector<float>> score_buf;  // one score block per thread
  std::vector<float> x_buf, qkv_buf, ctx_buf, out_buf;
  std::vector<uint16_t> bf16_buf;  // projection input in bf16 precision

  absl::Status Init(const OneDnnEngineOptions& options);
  Projection MakeProjection(const std::vector<float>& weights_ab,
                            const std::vector<float>& bias, memory::dim in,
                            memory::dim out, dt type);
  void Project(const Projection& p, const float* src, memory::dim rows, float* dst);
  absl::StatusOr<std::vector<SequenceOutput>> RunLocked(
      std::span<const SequenceInput> batch);
  void RunAttention(const AttentionPlan& plan, std::vector<SequenceOutput>& outs);
  void AttendBlock(const AttentionPlan& plan, const AttentionTask& task,
                   std::vector<SequenceOutput>& outs, int thread);
};

Projection OneDnnEngine::Impl::MakeProjection(const std::vector<float>& weights_ab,
                                              const std::vector<float>& bias,
                                              memory::dim in, memory::dim out,
                                              dt type) {
  Projection p;
  p.src_type = type;
  p.in = in;
  p.out = out;
  const auto src_md = memory::desc({kRuntime, in}, type, {in, 1});
  const auto w_any = memory::desc({in, out}, type, memory::format_tag::any);
  const auto b_md = memory::desc({1, out}, dt::f32, {out, 1});
  const auto dst_md = memory::desc({kRuntime, out}, dt::f32, {out, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::library);
  auto pd = dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(src_md, w_any, b_md, dst_md), attr, eng);
  p.prim = dnnl::matmul(pd);
  ++primitives_created;
  // Reorder the plain weights (K x N, f32) into the layout and type the
  // primitive wants; done once here, never per call.
  memory plain(memory::desc({in, out}, dt::f32, {out, 1}), eng,
               const_cast<float*>(weights_ab.data()));
  p.weights = memory(pd.weights_desc(), eng);
  dnnl::stream s(eng);
  dnnl::reorder(plain, p.weights).execute(s, plain, p.weights);
  s.wait();
  primitives_created += 1;
  p.bias = memory(b_md, eng);
  std::copy(bias.begin(), bias.end(), static_cast<float*>(p.bias.get_data_handle()));
  return p;
}

absl::Status OneDnnEngine::Impl::Init(const OneDnnEngineOptions& options) {
  const ModelConfig& c = model->config;
  const ModelWeights& w = model->weights;
  num_threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  const dt type = c.precision == Precision::kBf16 ? dt::bf16 : dt::f32;
  const memory::dim d = c.d_model;
  if (c.projections) {
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
    qkv_proj = MakeProjection(qkv_t, qkv_b, d, 3 * d, type);
    out_proj = MakeProjection(out_t, w.out_bias, d, d, type);
  }
  if (c.positional == Positional::kSinusoidal) {
    positions = SinusoidalTable(c.max_length, c.d_model);
  } else if (c.positional == Positional::kLearned) {
    positions = w.pos_embedding;
  } else if (c.positional == Positional::kRotary) {
    rotary.emplace(c.max_length, c.d_head());
  }
  dnnl::primitive_attr scores_attr;
  scores_attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});
  scores_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // Only the row counts vary per call; strides are fixed by the model (Q, K
  // and V are column slices of the [T, 3d] projection, the context a slice of
  // [T, d]) and the scores block is dense. Runtime strides would send oneDNN
  // to its reference matmul.
  const memory::dim dh = c.d_head();
  const auto q_md = memory::desc({kRuntime, dh}, dt::f32, {3 * d, 1});
  const auto kt_md = memory::desc({dh, kRuntime}, dt::f32, {1, 3 * d});
  const auto scores_md = memory::desc({kRuntime, kRuntime}, dt::f32, memory::format_tag::ab);
  const auto v_md = memory::desc({kRuntime, dh}, dt::f32, {3 * d, 1});
  const auto ctx_md = memory::desc({kRuntime, dh}, dt::f32, {d, 1});
  auto scores_pd = dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(q_md, kt_md, scores_md), scores_attr, eng);
  dnnl::primitive_attr context_attr;
  context_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto context_pd = dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(scores_md, v_md, ctx_md), context_attr, eng);
  const std::string scores_impl = scores_pd.impl_info_str();
  const std::string context_impl = context_pd.impl_info_str();
  if (scores_impl.rfind("ref", 0) == 0 || context_impl.rfind("ref", 0) == 0) {
    return absl::InternalError(absl::StrCat(
        "oneDNN picked its reference matmul for attention (", scores_impl, ", ",
        context_impl, "); refusing to run slow"));
  }
  if (scores_pd.scratchpad_desc().get_size() != 0 ||
      context_pd.scratchpad_desc().get_size() != 0) {
    return absl::InternalError("oneDNN attention matmuls unexpectedly need a scratchpad");
  }
  scores_prim = dnnl::matmul(scores_pd);
  context_prim = dnnl::matmul(context_pd);
  primitives_created += 2;
  for (int t = 0; t < num_threads; ++t) streams.emplace_back(eng);
  score_buf.resize(num_threads);
  return absl::OkStatus();
}

void OneDnnEngine::Impl::Project(const Projection& p, const float* src,
                                 memory::dim rows, float* dst) {
  const void* handle = src;
  if (p.src_type == dt::bf16) {
    bf16_buf.resize(rows * p.in);
    for (memory::dim i = 0; i < rows * p.in; ++i) bf16_buf[i] = FloatToBf16(src[i]);
    handle = bf16_buf.data();
  }
  memory src_mem(RowMajor(rows, p.in, p.in, p.src_type), eng, const_cast<void*>(handle));
  memory dst_mem(RowMajor(rows, p.out, p.out), eng, dst);
  p.prim.execute(streams[0], {{DNNL_ARG_SRC, src_mem},
                              {DNNL_ARG_WEIGHTS, p.weights},
                              {DNNL_ARG_BIAS, p.bias},
                              {DNNL_ARG_DST, dst_mem}});
  streams[0].wait();
}

absl::StatusOr<std::vector<SequenceOutput>> OneDnnEngine::Impl::RunLocked(
    std::span<const SequenceInput> batch) {
  const ModelConfig& c = model->config;
  const size_t d = c.d_model;
  // oneDNN sizes its own parallel regions from the calling thread's OpenMP
  // setting (a per-thread value), so set it here, on the thread that runs.
  omp_set_num_threads(num_threads);
  const AttentionPlan plan =
      MakeAttentionPlan(batch, kScoreBlockFloats, kMaxBlockRows, kMinBlockRows);
  const size_t T = plan.total_tokens;
  // 1. Pack every sequence end to end, adding the positional encoding.
  x_buf.resize(T * d);
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (size_t s = 0; s < plan.seqs.size(); ++s) {
    const SequencePlan& sp = plan.seqs[s];
    float* x = &x_buf[sp.offset * d];
    std::copy(sp.input->data.begin(), sp.input->data.end(), x);
    if (!positions.empty()) {
      for (size_t n = 0; n < size_t{sp.length} * d; ++n) x[n] += positions[n];
    }
  }
  // 2. Q, K, V for every token at once: [T, 3d].
  qkv_buf.resize(T * 3 * d);
  if (qkv_proj) {
    Project(*qkv_proj, x_buf.data(), T, qkv_buf.data());
  } else {
    for (size_t t = 0; t < T; ++t) {  // parameter-free: Q = K = V = X
      for (int part = 0; part < 3; ++part) {
        std::copy_n(&x_buf[t * d], d, &qkv_buf[t * 3 * d + part * d]);
      }
    }
  }
  if (rotary) {
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (size_t s = 0; s < plan.seqs.size(); ++s) {
      const SequencePlan& sp = plan.seqs[s];
      for (uint32_t p = 0; p < sp.length; ++p) {
        float* row = &qkv_buf[(sp.offset + p) * 3 * d];
        for (uint32_t h = 0; h < c.num_heads; ++h) {
          rotary->Apply(row + h * c.d_head(), p);      // q
          rotary->Apply(row + d + h * c.d_head(), p);  // k
        }
      }
    }
  }
  // 3. Attention per (sequence, row block) -> context [T, d].
  std::vector<SequenceOutput> outs(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const size_t L = batch[s].length;
    if (batch[s].weights == WeightsMode::kPerHead) {
      outs[s].attention.assign(c.num_heads, std::vector<float>(L * L, 0.0f));
    } else if (batch[s].weights == WeightsMode::kMean) {
      outs[s].attention.assign(1, std::vector<float>(L * L, 0.0f));
    }
  }
  ctx_buf.resize(T * d);
  RunAttention(plan, outs);
  // 4. Output projection over every token at once.
  const float* y = ctx_buf.data();
  if (out_proj) {
    out_buf.resize(T * d);
    Project(*out_proj, ctx_buf.data(), T, out_buf.data());
    y = out_buf.data();
  }
  // 5. Unpack (into the caller's buffers where given), pooling where asked.
  //    Memory-bound copies: spread over the threads for large batches.
#pragma omp parallel for num_threads(num_threads) schedule(static) if (T * d >= (1u << 16))
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequencePlan& sp = plan.seqs[s];
    const float* rows = y + sp.offset * d;
    if (batch[s].pooling == Pooling::kNone) {
      std::copy_n(rows, size_t{sp.length} * d, OutputRows(batch[s], sp.length, d, outs[s]).data());
    } else if (batch[s].pooling == Pooling::kFirst) {
      std::copy_n(rows, d, OutputRows(batch[s], 1, d, outs[s]).data());
    } else {
      std::vector<double> sum(d, 0.0);
      for (uint32_t i = 0; i < sp.length; ++i) {
        for (size_t k = 0; k < d; ++k) sum[k] += rows[i * d + k];
      }
      const std::span<float> dst = OutputRows(batch[s], 1, d, outs[s]);
      for (size_t k = 0; k < d; ++k) dst[k] = static_cast<float>(sum[k] / sp.length);
    }
  }
  return outs;
}

void OneDnnEngine::Impl::RunAttention(const AttentionPlan& plan,
                                      std::vector<SequenceOutput>& outs) {
  for (auto& buf : score_buf) buf.resize(2 * plan.max_block_floats);  // scores + one masking row
  std::atomic<bool> failed{false};
  std::string error;
  // oneDNN primitives called inside this region run on the calling thread
  // (OpenMP nesting is off), so the two levels of parallelism do not fight.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (size_t n = 0; n < plan.tasks.size(); ++n) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      AttendBlock(plan, plan.tasks[n], outs, omp_get_thread_num());
    } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc
#pragma omp critical(attn_error)
      if (!failed.exchange(true)) error = e.what();
    }
  }
  if (failed) throw std::runtime_error(error);
}

void OneDnnEngine::Impl::AttendBlock(const AttentionPlan& plan, const AttentionTask& task,
                                     std::vector<SequenceOutput>& outs, int thread) {
  const ModelConfig& c = model->config;
  const memory::dim d = c.d_model, dh = c.d_head(), ld = 3 * d;
  const SequencePlan& sp = plan.seqs[task.seq];
  const SequenceInput& seq = *sp.input;
  const uint32_t rows = task.row_end - task.row_begin;
  const uint32_t width = task.key_end - task.key_begin;
  const uint32_t L = sp.length;
  float* scores = score_buf[thread].data();
  float* scratch = scores + size_t{rows} * width;
  dnnl::stream& stream = streams[thread];
  const float* q0 = &qkv_buf[(sp.offset + task.row_begin) * ld];
  const float* k0 = &qkv_buf[(sp.offset + task.key_begin) * ld + d];
  const float* v0 = &qkv_buf[(sp.offset + task.key_begin) * ld + 2 * d];
  float scale = static_cast<float>(c.scale);
  memory scale_mem(memory::desc({1}, dt::f32, {1}), eng, &scale);
  memory scores_mem(RowMajor(rows, width, width), eng, scores);
  for (uint32_t h = 0; h < c.num_heads; ++h) {
    if (c.relevance == Relevance::kDot) {
      memory q_mem(RowMajor(rows, dh, ld), eng, const_cast<float*>(q0 + h * dh));
      memory kt_mem(Transposed(width, dh, ld), eng, const_cast<float*>(k0 + h * dh));
      scores_prim.execute(stream, {{DNNL_ARG_SRC, q_mem},
                                   {DNNL_ARG_WEIGHTS, kt_mem},
                                   {DNNL_ARG_DST, scores_mem},
                                   {DNNL_ARG_ATTR_OUTPUT_SCALES, scale_mem}});
    } else {
      const float* v = &model->weights.additive_v[h * dh];
      for (uint32_t r = 0; r < rows; ++r) {
        kernels::AdditiveScores(q0 + r * ld + h * dh, k0 + h * dh, ld, v, dh, width,
                                scores + size_t{r} * width);
      }
    }
    for (uint32_t r = 0; r < rows; ++r) {
      float* row = scores + size_t{r} * width;
      const uint32_t allowed = MaskRow(sp, task.row_begin + r, task.key_begin, row, width, scratch);
      if (c.normalization == Normalization::kSoftmax) {
        kernels::SoftmaxRow(row, width);
      } else {
        kernels::ReluNormalizeRow(row, width, allowed);
      }
    }
    memory v_mem(RowMajor(width, dh, ld), eng, const_cast<float*>(v0 + h * dh));
    memory ctx_mem(RowMajor(rows, dh, d), eng,
                   &ctx_buf[(sp.offset + task.row_begin) * d + h * dh]);
    context_prim.execute(stream, {{DNNL_ARG_SRC, scores_mem},
                                  {DNNL_ARG_WEIGHTS, v_mem},
                                  {DNNL_ARG_DST, ctx_mem}});
    if (seq.weights == WeightsMode::kNone) continue;
    // Weights out: the block's rows, keys [key_begin, key_end); the rest stays 0.
    const bool mean = seq.weights == WeightsMode::kMean;
    float* w = outs[task.seq].attention[mean ? 0 : h].data();
    const float factor = mean ? 1.0f / c.num_heads : 1.0f;
    for (uint32_t r = 0; r < rows; ++r) {
      float* dst = w + size_t{task.row_begin + r} * L + task.key_begin;
      const float* src = scores + size_t{r} * width;
      if (mean) {
        for (uint32_t j = 0; j < width; ++j) dst[j] += factor * src[j];
      } else {
        std::copy_n(src, width, dst);
      }
    }
  }
  stream.wait();
}

OneDnnEngine::OneDnnEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnEngine::~OneDnnEngine() = default;

absl::StatusOr<std::unique_ptr<OneDnnEngine>> OneDnnEngine::Create(
    std::shared_ptr<const Model> model, const OneDnnEngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("model is null");
  absl::Status st = ValidateModelConfig(model->config, model->name);
  if (st.ok()) st = ValidateModelWeights(model->config, model->weights, model->name);
  if (!st.ok()) return st;
  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  try {
    st = impl->Init(options);
  } catch (const dnnl::error& e) {
    st = absl::InternalError(absl::StrCat("oneDNN setup failed: ", e.what()));
  }
  if (!st.ok()) return st;
  return std::unique_ptr<OneDnnEngine>(new OneDnnEngine(std::move(impl)));
}

const Model& OneDnnEngine::model() const { return *impl_->model; }

absl::StatusOr<std::vector<SequenceOutput>> OneDnnEngine::Run(
    std::span<const SequenceInput> batch) {
  if (absl::Status st = ValidateBatch(impl_->model->config, batch); !st.ok()) return st;
  std::lock_guard<std::mutex> lock(impl_->mu);
  // The one place exceptions from oneDNN or allocation are turned into status.
  try {
    return impl_->RunLocked(batch);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("attention engine failed: ", e.what()));
  }
}

uint64_t OneDnnEngine::primitives_created() const { return impl_->primitives_created; }

std::string OneDnnEngine::IsaName() { return IsaToString(dnnl::get_effective_cpu_isa()); }

}  // namespace attnserve::core
