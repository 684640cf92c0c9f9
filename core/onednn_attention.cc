#include "core/onednn_attention.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <exception>

#include "absl/strings/str_cat.h"
#include "core/kernels.h"

namespace attnserve::core {
namespace {

using dnnl::memory;
using dt = memory::data_type;
constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;

// The transpose view of a row-major rows x cols matrix: cols x rows.
memory::desc Transposed(memory::dim rows, memory::dim cols, memory::dim ld, dt type) {
  return memory::desc({cols, rows}, type, {1, ld});
}

// Per-row statistics of a tiled task: running max, running sum (softmax) or
// allowed-key count (ReLU), and the rescale factor of the current tile.
struct RowStats {
  float* max;
  float* sum;
  float* rescale;
};

}  // namespace

absl::StatusOr<std::unique_ptr<OneDnnAttention>> OneDnnAttention::Create(
    std::shared_ptr<const Model> model, const dnnl::engine& eng, bool bf16, int num_threads,
    bool profile) {
  std::unique_ptr<OneDnnAttention> a(new OneDnnAttention());
  const ModelConfig& c = model->config;
  a->model_ = std::move(model);
  a->eng_ = eng;
  a->bf16_ = bf16;
  a->num_threads_ = num_threads;
  a->profile_ = profile;
  a->act_type_ = bf16 ? dt::bf16 : dt::f32;
  a->act_bytes_ = bf16 ? 2 : 4;
  // Only the row counts vary per call; strides are fixed by the model (Q, K
  // and V are column slices of the [T, 3d] projection, the context a slice of
  // [T, d]) and the score block is dense. Runtime strides would send oneDNN
  // to its reference matmul.
  const memory::dim d = c.d_model, dh = c.d_head();
  const dt act = a->act_type_;
  const auto q_md = memory::desc({kRuntime, dh}, act, {3 * d, 1});
  const auto kt_md = memory::desc({dh, kRuntime}, act, {1, 3 * d});
  const auto scores_md = memory::desc({kRuntime, kRuntime}, dt::f32, memory::format_tag::ab);
  const auto probs_md = memory::desc({kRuntime, kRuntime}, act, memory::format_tag::ab);
  const auto v_md = memory::desc({kRuntime, dh}, act, {3 * d, 1});
  const auto ctx_md = memory::desc({kRuntime, dh}, dt::f32, {d, 1});
  // A session's ring holds k | v rows (2d): the same matmuls over its stride.
  const auto kt_ring_md = memory::desc({dh, kRuntime}, act, {1, 2 * d});
  const auto v_ring_md = memory::desc({kRuntime, dh}, act, {2 * d, 1});
  try {
    dnnl::primitive_attr scores_attr;
    scores_attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});
    scores_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::primitive_attr context_attr;
    context_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::primitive_attr acc_attr;  // (copying an attr would share its handle)
    acc_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::post_ops sum;
    sum.append_sum(1.0f);
    acc_attr.set_post_ops(sum);
    const dnnl::matmul::primitive_desc pds[] = {
        {dnnl::matmul::desc(q_md, kt_md, scores_md), scores_attr, eng},
        {dnnl::matmul::desc(probs_md, v_md, ctx_md), context_attr, eng},
        {dnnl::matmul::desc(probs_md, v_md, ctx_md), acc_attr, eng},
        {dnnl::matmul::desc(q_md, kt_ring_md, scores_md), scores_attr, eng},
        {dnnl::matmul::desc(probs_md, v_ring_md, ctx_md), context_attr, eng},
        {dnnl::matmul::desc(probs_md, v_ring_md, ctx_md), acc_attr, eng}};
    for (const auto& pd : pds) {
      const std::string impl = pd.impl_info_str();
      if (impl.rfind("ref", 0) == 0) {
        return absl::InternalError(absl::StrCat(
            "oneDNN picked its reference matmul for attention (", impl, "); refusing to run slow"));
      }
      if (pd.scratchpad_desc().get_size() != 0) {
        return absl::InternalError("oneDNN attention matmuls unexpectedly need a scratchpad");
      }
    }
    a->impl_info_ = absl::StrCat(pds[0].impl_info_str(), ", ", pds[1].impl_info_str());
    a->scores_prim_ = dnnl::matmul(pds[0]);
    a->context_prim_ = dnnl::matmul(pds[1]);
    a->context_acc_prim_ = dnnl::matmul(pds[2]);
    a->scores_ring_prim_ = dnnl::matmul(pds[3]);
    a->context_ring_prim_ = dnnl::matmul(pds[4]);
    a->context_ring_acc_prim_ = dnnl::matmul(pds[5]);
    a->primitives_created_ = 6;
    if (c.relevance == Relevance::kDot) {
      // One call for every head of a small block: Q [H, rows, dh] and K^T
      // [H, dh, keys] as strided views, dense [H, rows, keys] scores. Used
      // only when oneDNN has a real (not reference) implementation.
      const memory::dim H = c.num_heads;
      const auto q3 = memory::desc({H, kRuntime, dh}, act, {dh, 3 * d, 1});
      const auto s3 = memory::desc({H, kRuntime, kRuntime}, dt::f32, memory::format_tag::abc);
      const auto p3 = memory::desc({H, kRuntime, kRuntime}, act, memory::format_tag::abc);
      const auto c3 = memory::desc({H, kRuntime, dh}, dt::f32, {dh, d, 1});
      bool usable = true;
      std::vector<dnnl::matmul::primitive_desc> heads;
      try {  // optional: without them a chunk's heads are computed one by one
        for (const memory::dim ld : {3 * d, 2 * d}) {
          const auto kt3 = memory::desc({H, dh, kRuntime}, act, {dh, 1, ld});
          const auto v3 = memory::desc({H, kRuntime, dh}, act, {dh, ld, 1});
          heads.emplace_back(dnnl::matmul::desc(q3, kt3, s3), scores_attr, eng);
          heads.emplace_back(dnnl::matmul::desc(p3, v3, c3), context_attr, eng);
          heads.emplace_back(dnnl::matmul::desc(p3, v3, c3), acc_attr, eng);
        }
      } catch (const dnnl::error&) {
        usable = false;
      }
      for (const auto& pd : heads) {
        usable = usable && std::string(pd.impl_info_str()).rfind("ref", 0) != 0 &&
                 pd.scratchpad_desc().get_size() == 0;
      }
      if (usable) {
        for (int k = 0; k < 2; ++k) {
          a->scores_heads_prim_[k] = dnnl::matmul(heads[3 * k]);
          a->context_heads_prim_[k] = dnnl::matmul(heads[3 * k + 1]);
          a->context_heads_acc_prim_[k] = dnnl::matmul(heads[3 * k + 2]);
        }
        a->batched_ = true;
        a->primitives_created_ += 6;
      }
    }
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN has no ", bf16 ? "bf16" : "f32",
                                            " attention matmul here: ", e.what()));
  }
  a->threads_.reserve(num_threads);
  for (int t = 0; t < num_threads; ++t) a->threads_.push_back({dnnl::stream(eng), {}, {}, {}, {}});
  return a;
}

void OneDnnAttention::TakeProfile(EngineProfile& into) {
  for (ThreadState& ts : threads_) {
    into.scores += ts.times.scores;
    into.normalize += ts.times.normalize;
    into.context += ts.times.context;
    into.weights_out += ts.times.weights_out;
    ts.times = {};
  }
}

void OneDnnAttention::TrimScratch(size_t max_bytes) {
  for (ThreadState& ts : threads_) {
    ts.scores.Trim(max_bytes);
    ts.probs.Trim(max_bytes);
    ts.stats.Trim(max_bytes);
  }
}

void OneDnnAttention::Run(const AttentionPlan& plan, const void* qkv, float* context,
                          std::vector<SequenceOutput>& outs) {
  for (ThreadState& ts : threads_) {  // scores + one masking row; probs; 3 stats per row
    ts.scores.ReserveAs<float>(2 * plan.max_tile_floats);
    if (bf16_) ts.probs.ReserveAs<uint16_t>(plan.max_tile_floats);
    ts.stats.ReserveAs<float>(3 * size_t{plan.max_rows});
  }
  // No exception may leave an OpenMP region (that is std::terminate): the
  // first one is kept (copying an exception_ptr does not throw) and rethrown,
  // with its type, once every thread is out.
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  // oneDNN primitives called inside this region run on the calling thread
  // (OpenMP nesting is off), so the two levels of parallelism do not fight.
#pragma omp parallel for num_threads(num_threads_) schedule(dynamic, 1)
  for (size_t n = 0; n < plan.tasks.size(); ++n) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      RunTask(plan, plan.tasks[n], qkv, context, outs, threads_[omp_get_thread_num()]);
    } catch (...) {  // dnnl::error, std::bad_alloc
#pragma omp critical(attn_error)
      if (!failed.exchange(true)) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void OneDnnAttention::RunTask(const AttentionPlan& plan, const AttentionTask& task,
                              const void* qkv, float* context,
                              std::vector<SequenceOutput>& outs, ThreadState& ts) {
  const SequencePlan& sp = plan.seqs[task.seq];
  StageClock clock(profile_);
  if (task.ring && batched_ && task.head_end - task.head_begin == model_->config.num_heads) {
    AttendRingBatched(sp, task, qkv, context, ts, clock);
    return;
  }
  for (uint32_t h = task.head_begin; h < task.head_end; ++h) {
    if (task.tiled()) {
      AttendTiled(sp, task, h, qkv, context, ts, clock);
    } else {
      AttendWhole(sp, task, h, qkv, context, outs, ts, clock);
    }
  }
  ts.stream.wait();
  clock.Lap(ts.times.context);
}

void OneDnnAttention::Scores(const SequencePlan& sp, const AttentionTask& task, uint32_t head,
                             const void* qkv, uint32_t key_begin, uint32_t width,
                             float* scores, ThreadState& ts) {
  const ModelConfig& c = model_->config;
  const size_t d = c.d_model, dh = c.d_head(), ld = 3 * d;
  const uint32_t rows = task.row_end - task.row_begin;
  auto* base = static_cast<char*>(const_cast<void*>(qkv));
  const char* q = base + (sp.PackedRow(task.row_begin) * ld + head * dh) * act_bytes_;
  // The keys: in the session's ring (k | v rows) or in the packed Q/K/V.
  const bool in_ring = key_begin < sp.packed_key0();
  const size_t k_ld = in_ring ? 2 * d : ld;
  const char* k = in_ring ? sp.CachedRow(key_begin) + head * dh * act_bytes_
                          : base + (sp.PackedRow(key_begin) * ld + d + head * dh) * act_bytes_;
  if (c.relevance == Relevance::kAdditive) {  // never bf16: see Create's callers
    const float* v = &model_->weights.additive_v[head * dh];
    for (uint32_t r = 0; r < rows; ++r) {
      kernels::AdditiveScores(reinterpret_cast<const float*>(q) + r * ld,
                              reinterpret_cast<const float*>(k), k_ld, v, dh, width,
                              scores + size_t{r} * width);
    }
    return;
  }
  float scale = static_cast<float>(c.scale);
  memory scale_mem(memory::desc({1}, dt::f32, {1}), eng_, &scale);
  memory q_mem(RowMajor(rows, dh, ld, act_type_), eng_, const_cast<char*>(q));
  memory kt_mem(Transposed(width, dh, k_ld, act_type_), eng_, const_cast<char*>(k));
  memory s_mem(RowMajor(rows, width, width, dt::f32), eng_, scores);
  (in_ring ? scores_ring_prim_ : scores_prim_).execute(ts.stream, {{DNNL_ARG_SRC, q_mem},
                                   {DNNL_ARG_WEIGHTS, kt_mem},
                                   {DNNL_ARG_DST, s_mem},
                                   {DNNL_ARG_ATTR_OUTPUT_SCALES, scale_mem}});
  // scale lives on this stack frame: finish before returning (cheap on a
  // CPU stream, which executes in order on this thread anyway).
  ts.stream.wait();
}

void OneDnnAttention::Context(const SequencePlan& sp, const AttentionTask& task,
                              uint32_t head, const void* qkv, const void* probs,
                              uint32_t key_begin, uint32_t width, float* ctx,
                              bool accumulate, ThreadState& ts) {
  const ModelConfig& c = model_->config;
  const size_t d = c.d_model, dh = c.d_head(), ld = 3 * d;
  const uint32_t rows = task.row_end - task.row_begin;
  auto* base = static_cast<char*>(const_cast<void*>(qkv));
  const bool in_ring = key_begin < sp.packed_key0();
  const char* v = in_ring ? sp.CachedRow(key_begin) + (d + head * dh) * act_bytes_
                          : base + (sp.PackedRow(key_begin) * ld + 2 * d + head * dh) * act_bytes_;
  memory p_mem(RowMajor(rows, width, width, act_type_), eng_, const_cast<void*>(probs));
  memory v_mem(RowMajor(width, dh, in_ring ? 2 * d : ld, act_type_), eng_, const_cast<char*>(v));
  memory ctx_mem(RowMajor(rows, dh, d, dt::f32), eng_, ctx);
  const dnnl::matmul& prim = in_ring ? (accumulate ? context_ring_acc_prim_ : context_ring_prim_)
                                     : (accumulate ? context_acc_prim_ : context_prim_);
  prim.execute(ts.stream, {{DNNL_ARG_SRC, p_mem}, {DNNL_ARG_WEIGHTS, v_mem}, {DNNL_ARG_DST, ctx_mem}});
}

const void* OneDnnAttention::ProbsFor(float* scores, ThreadState& ts) const {
  return bf16_ ? ts.probs.ReserveAs<uint16_t>(0) : static_cast<const void*>(scores);
}

void OneDnnAttention::FinishRow(const float* row, uint32_t r, uint32_t width,
                                ThreadState& ts) const {
  if (bf16_) kernels::ToBf16(row, ts.probs.ReserveAs<uint16_t>(0) + size_t{r} * width, width);
}

void OneDnnAttention::AttendWhole(const SequencePlan& sp, const AttentionTask& task,
                                  uint32_t head, const void* qkv, float* context,
                                  std::vector<SequenceOutput>& outs, ThreadState& ts,
                                  StageClock& clock) {
  const ModelConfig& c = model_->config;
  const uint32_t d = c.d_model, dh = c.d_head();
  const uint32_t rows = task.row_end - task.row_begin;
  const uint32_t width = task.key_end - task.key_begin;
  const size_t L = sp.length;
  const SequenceInput& seq = *sp.input;
  const bool mean = seq.weights == WeightsMode::kMean;
  // The block's rows of the returned weights (uninitialized until written).
  float* w = seq.weights == WeightsMode::kNone
                 ? nullptr
                 : outs[task.seq].attention[mean ? 0 : head].data() +
                       size_t{task.row_begin - sp.first_query} * L;
  // Per-head weights over every key: the block's rows x L entries are
  // contiguous in the output, so the scores are computed, normalized and read
  // by P.V right there, with no copy.
  const bool in_place = seq.weights == WeightsMode::kPerHead && width == L;
  float* scores = in_place ? w : ts.scores.ReserveAs<float>(0);
  float* scratch = in_place ? ts.scores.ReserveAs<float>(0) : scores + size_t{rows} * width;
  Scores(sp, task, head, qkv, task.key_begin, width, scores, ts);
  clock.Lap(ts.times.scores);
  for (uint32_t r = 0; r < rows; ++r) {
    float* row = scores + size_t{r} * width;
    const uint32_t allowed = MaskRow(sp, task.row_begin + r, task.key_begin, row, width, scratch);
    if (c.normalization == Normalization::kSoftmax) {
      kernels::SoftmaxRow(row, width);
    } else {
      kernels::ReluNormalizeRow(row, width, allowed);
    }
    FinishRow(row, r, width, ts);
  }
  clock.Lap(ts.times.normalize);
  float* ctx = context + (sp.out_offset + task.row_begin - sp.first_query) * d + head * dh;
  Context(sp, task, head, qkv, ProbsFor(scores, ts), task.key_begin, width, ctx, false, ts);
  clock.Lap(ts.times.context);
  if (w == nullptr || in_place) return;
  // Weights out: the block's rows, keys [key_begin, key_end); every other
  // entry of those rows is 0. Each entry is written once per matrix; the
  // mean's first head writes, later heads add (the task's block stays in
  // cache between heads).
  const bool assign = !mean || head == task.head_begin;
  const float factor = mean ? 1.0f / c.num_heads : 1.0f;
  for (uint32_t r = 0; r < rows; ++r) {
    float* dst_row = w + r * L;
    float* dst = dst_row + task.key_begin;
    const float* src = scores + size_t{r} * width;
    if (assign) {
      std::fill(dst_row, dst, 0.0f);
      if (mean) {
        for (uint32_t j = 0; j < width; ++j) dst[j] = factor * src[j];
      } else {
        std::copy_n(src, width, dst);
      }
      std::fill(dst + width, dst_row + L, 0.0f);
    } else {
      for (uint32_t j = 0; j < width; ++j) dst[j] += factor * src[j];
    }
  }
  clock.Lap(ts.times.weights_out);
}

void OneDnnAttention::AttendTiled(const SequencePlan& sp, const AttentionTask& task,
                                  uint32_t head, const void* qkv, float* context,
                                  ThreadState& ts, StageClock& clock) {
  const ModelConfig& c = model_->config;
  const uint32_t d = c.d_model, dh = c.d_head();
  const uint32_t rows = task.row_end - task.row_begin;
  const bool softmax = c.normalization == Normalization::kSoftmax;
  float* scores = ts.scores.ReserveAs<float>(0);
  float* scratch = scores + size_t{rows} * task.key_tile;
  float* stats_mem = ts.stats.ReserveAs<float>(0);
  const RowStats stats{stats_mem, stats_mem + rows, stats_mem + 2 * rows};
  std::fill_n(stats.max, rows, -std::numeric_limits<float>::infinity());
  std::fill_n(stats.sum, rows, 0.0f);
  float* ctx = context + (sp.out_offset + task.row_begin - sp.first_query) * d + head * dh;
  uint32_t width = 0;
  for (uint32_t kb = task.key_begin; kb < task.key_end; kb += width) {
    // A tile never straddles the ring's wrap or the cached/own boundary.
    width = std::min({task.key_tile, task.key_end - kb, sp.RunEnd(kb) - kb});
    const bool first = kb == task.key_begin;
    Scores(sp, task, head, qkv, kb, width, scores, ts);
    clock.Lap(ts.times.scores);
    bool rescale = false;
    for (uint32_t r = 0; r < rows; ++r) {
      float* row = scores + size_t{r} * width;
      const uint32_t allowed = MaskRow(sp, task.row_begin + r, kb, row, width, scratch);
      if (softmax) {
        stats.rescale[r] = kernels::OnlineSoftmaxRow(row, width, &stats.max[r], &stats.sum[r]);
        rescale = rescale || stats.rescale[r] != 1.0f;
      } else {
        kernels::ReluRow(row, width);
        stats.sum[r] += static_cast<float>(allowed);  // exact below 2^24 keys
      }
      FinishRow(row, r, width, ts);
    }
    if (!first && rescale) {
      // The maximum moved: what was accumulated with the old one shrinks.
      // (The previous P.V on this stream has finished: CPU streams run in
      // order on this thread.)
      ts.stream.wait();
      for (uint32_t r = 0; r < rows; ++r) {
        float* out = ctx + size_t{r} * d;
        const float f = stats.rescale[r];
        for (uint32_t k = 0; k < dh; ++k) out[k] *= f;
      }
    }
    clock.Lap(ts.times.normalize);
    Context(sp, task, head, qkv, ProbsFor(scores, ts), kb, width, ctx, !first, ts);
    clock.Lap(ts.times.context);
  }
  ts.stream.wait();
  // Divide by the softmax denominator or the ReLU count; a row that saw no
  // allowed key has 0 for either, and its context (all zeros) stays 0.
  for (uint32_t r = 0; r < rows; ++r) {
    float* out = ctx + size_t{r} * d;
    const float f = stats.sum[r] > 0.0f ? 1.0f / stats.sum[r] : 0.0f;
    for (uint32_t k = 0; k < dh; ++k) out[k] *= f;
  }
  clock.Lap(ts.times.normalize);
}

void OneDnnAttention::AttendRingBatched(const SequencePlan& sp, const AttentionTask& task,
                                        const void* qkv, float* context, ThreadState& ts,
                                        StageClock& clock) {
  const ModelConfig& c = model_->config;
  const uint32_t d = c.d_model, dh = c.d_head(), H = c.num_heads;
  const memory::dim ld = 3 * memory::dim{d};
  const uint32_t rows = task.row_end - task.row_begin;
  const size_t block = size_t{H} * rows;  // score rows: head-major
  const bool softmax = c.normalization == Normalization::kSoftmax;
  float* scores = ts.scores.ReserveAs<float>(0);
  float* stats_mem = ts.stats.ReserveAs<float>(0);
  const RowStats stats{stats_mem, stats_mem + block, stats_mem + 2 * block};
  std::fill_n(stats.max, block, -std::numeric_limits<float>::infinity());
  std::fill_n(stats.sum, block, 0.0f);
  // The chunk's context rows; head h is the column slice [h dh, (h + 1) dh).
  float* ctx = context + (sp.out_offset + task.row_begin - sp.first_query) * d;
  auto* base = static_cast<char*>(const_cast<void*>(qkv));
  char* q = base + sp.PackedRow(task.row_begin) * ld * act_bytes_;
  float scale = static_cast<float>(c.scale);
  memory scale_mem(memory::desc({1}, dt::f32, {1}), eng_, &scale);
  const memory::dim mh = H, mrows = rows, mdh = dh;
  memory q_mem(memory::desc({mh, mrows, mdh}, act_type_, {mdh, ld, 1}), eng_, q);
  memory ctx_mem(memory::desc({mh, mrows, mdh}, dt::f32, {mdh, memory::dim{d}, 1}), eng_, ctx);
  uint32_t width = 0;
  for (uint32_t kb = task.key_begin; kb < task.key_end; kb += width) {
    width = std::min({task.key_tile, task.key_end - kb, sp.RunEnd(kb) - kb});
    const bool first = kb == task.key_begin;
    const bool in_ring = kb < sp.packed_key0();
    const int k = in_ring ? 1 : 0;
    const memory::dim kv_ld = in_ring ? 2 * memory::dim{d} : ld;
    char* keys = in_ring ? const_cast<char*>(sp.CachedRow(kb))
                         : base + (sp.PackedRow(kb) * ld + d) * act_bytes_;
    char* values = keys + size_t{d} * act_bytes_;  // v follows k in both layouts
    const memory::dim mw = width;
    memory kt_mem(memory::desc({mh, mdh, mw}, act_type_, {mdh, 1, kv_ld}), eng_, keys);
    memory s_mem(memory::desc({mh, mrows, mw}, dt::f32, memory::format_tag::abc), eng_, scores);
    scores_heads_prim_[k].execute(ts.stream, {{DNNL_ARG_SRC, q_mem},
                                              {DNNL_ARG_WEIGHTS, kt_mem},
                                              {DNNL_ARG_DST, s_mem},
                                              {DNNL_ARG_ATTR_OUTPUT_SCALES, scale_mem}});
    ts.stream.wait();
    clock.Lap(ts.times.scores);
    bool rescale = false;
    float* scratch = scores + block * width;  // MaskRow's (no edges in a session: unused)
    for (size_t n = 0; n < block; ++n) {  // n = h * rows + r
      float* row = scores + n * width;
      const uint32_t allowed =
          MaskRow(sp, task.row_begin + static_cast<uint32_t>(n % rows), kb, row, width, scratch);
      if (softmax) {
        stats.rescale[n] = kernels::OnlineSoftmaxRow(row, width, &stats.max[n], &stats.sum[n]);
        rescale = rescale || stats.rescale[n] != 1.0f;
      } else {
        kernels::ReluRow(row, width);
        stats.sum[n] += static_cast<float>(allowed);
      }
      FinishRow(row, static_cast<uint32_t>(n), width, ts);
    }
    if (!first && rescale) {  // the previous P.V has finished (in-order stream, waited)
      for (size_t n = 0; n < block; ++n) {
        float* out = ctx + (n % rows) * d + (n / rows) * dh;
        for (uint32_t j = 0; j < dh; ++j) out[j] *= stats.rescale[n];
      }
    }
    clock.Lap(ts.times.normalize);
    memory p_mem(memory::desc({mh, mrows, mw}, act_type_, memory::format_tag::abc), eng_,
                 const_cast<void*>(ProbsFor(scores, ts)));
    memory v_mem(memory::desc({mh, mw, mdh}, act_type_, {mdh, kv_ld, 1}), eng_, values);
    (first ? context_heads_prim_[k] : context_heads_acc_prim_[k])
        .execute(ts.stream, {{DNNL_ARG_SRC, p_mem}, {DNNL_ARG_WEIGHTS, v_mem},
                             {DNNL_ARG_DST, ctx_mem}});
    ts.stream.wait();  // the next tile overwrites the scores P.V reads
    clock.Lap(ts.times.context);
  }
  for (size_t n = 0; n < block; ++n) {
    float* out = ctx + (n % rows) * d + (n / rows) * dh;
    const float f = stats.sum[n] > 0.0f ? 1.0f / stats.sum[n] : 0.0f;
    for (uint32_t j = 0; j < dh; ++j) out[j] *= f;
  }
  clock.Lap(ts.times.normalize);
}

}  // namespace attnserve::core
