// The reference engine: each formula of docs/DESIGN.md written out as plain loops
// in double precision, sequence by sequence, head by head. It shares no math
// with the oneDNN engine (positions, masks and normalization are recomputed
// here from their definitions), so agreement between the two means something.
// It ignores `precision`: its answer is the exact one bf16 approximates.

#include <algorithm>
#include <cmath>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/engine.h"

namespace attnserve::core {
namespace {

using Matrix = std::vector<double>;  // row-major, dimensions kept by the caller

// y[r] = W x[r] + b for each of `rows` rows; W is [out, in] (PyTorch).
Matrix Linear(const Matrix& x, size_t rows, size_t in, const std::vector<float>& w,
              const std::vector<float>& b, size_t out) {
  Matrix y(rows * out);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t o = 0; o < out; ++o) {
      double acc = b[o];
      for (size_t i = 0; i < in; ++i) acc += double(w[o * in + i]) * x[r * in + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

// allowed[i * L + j]: every rule of the mask admits the pair (i, j).
std::vector<bool> AllowedPairs(const Mask& mask, size_t L) {
  std::vector<bool> in_edges(L * L, mask.edges.empty());
  for (size_t e = 0; e + 1 < mask.edges.size(); e += 2) {
    in_edges[mask.edges[e] * L + mask.edges[e + 1]] = true;
  }
  std::vector<bool> allowed(L * L);
  for (size_t i = 0; i < L; ++i) {
    for (size_t j = 0; j < L; ++j) {
      const bool causal_ok = !mask.causal || j <= i;
      const size_t dist = i > j ? i - j : j - i;
      const bool window_ok = mask.window == 0 || dist <= mask.window;
      allowed[i * L + j] = causal_ok && window_ok && in_edges[i * L + j];
    }
  }
  return allowed;
}

// Rotates one head's slice in place: pairs (i, i + dh/2), angle p*10000^(-2i/dh).
void Rotate(double* x, size_t dh, size_t p) {
  const size_t half = dh / 2;
  for (size_t i = 0; i < half; ++i) {
    const double angle = p * std::pow(10000.0, -2.0 * i / dh);
    const double a = x[i], b = x[i + half];
    x[i] = a * std::cos(angle) - b * std::sin(angle);
    x[i + half] = b * std::cos(angle) + a * std::sin(angle);
  }
}

class ReferenceEngine final : public Engine {
 public:
  explicit ReferenceEngine(std::shared_ptr<const Model> model)
      : model_(std::move(model)) {}

  const Model& model() const override { return *model_; }

  absl::StatusOr<std::vector<SequenceOutput>> Run(
      std::span<const SequenceInput> batch) override {
    for (const SequenceInput& seq : batch) {
      if (seq.cache != nullptr) {
        return absl::UnimplementedError(
            "the reference engine computes whole sequences only, not a session's chunks");
      }
    }
    if (absl::Status st = ValidateBatch(model_->config, batch); !st.ok()) return st;
    std::vector<SequenceOutput> outputs;
    outputs.reserve(batch.size());
    for (const SequenceInput& seq : batch) outputs.push_back(RunOne(seq));
    return outputs;
  }

 private:
  // Input plus the additive positional encoding, in double.
  Matrix PositionedInput(const SequenceInput& seq) const {
    const ModelConfig& c = model_->config;
    const size_t L = seq.length, d = c.d_model;
    Matrix x(seq.data.begin(), seq.data.end());
    for (size_t p = 0; p < L; ++p) {
      for (size_t k = 0; k < d; ++k) {
        double pe = 0;
        if (c.positional == Positional::kSinusoidal) {
          const double angle = p / std::pow(10000.0, double(k - k % 2) / d);
          pe = k % 2 == 0 ? std::sin(angle) : std::cos(angle);
        } else if (c.positional == Positional::kLearned) {
          pe = model_->weights.pos_embedding[p * d + k];
        }
        x[p * d + k] += pe;
      }
    }
    return x;
  }

  double Score(const Matrix& q, const Matrix& k, size_t i, size_t j, size_t h) const {
    const ModelConfig& c = model_->config;
    const size_t d = c.d_model, dh = c.d_head();
    double s = 0;
    for (size_t t = 0; t < dh; ++t) {
      const double qi = q[i * d + h * dh + t], kj = k[j * d + h * dh + t];
      if (c.relevance == Relevance::kDot) {
        s += qi * kj;
      } else {
        s += double(model_->weights.additive_v[h * dh + t]) * std::tanh(qi + kj);
      }
    }
    return c.relevance == Relevance::kDot ? s * c.scale : s;
  }

  // Normalized weights of one head: L x L.
  Matrix HeadWeights(const Matrix& q, const Matrix& k, const std::vector<bool>& allowed,
                     size_t L, size_t h) const {
    Matrix w(L * L, 0.0);
    for (size_t i = 0; i < L; ++i) {
      std::vector<size_t> keys;
      for (size_t j = 0; j < L; ++j) if (allowed[i * L + j]) keys.push_back(j);
      if (keys.empty()) continue;  // no key: zero weights, zero context
      std::vector<double> s;
      for (size_t j : keys) s.push_back(Score(q, k, i, j, h));
      if (model_->config.normalization == Normalization::kSoftmax) {
        const double m = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& v : s) sum += (v = std::exp(v - m));
        for (size_t n = 0; n < keys.size(); ++n) w[i * L + keys[n]] = s[n] / sum;
      } else {
        for (size_t n = 0; n < keys.size(); ++n) {
          w[i * L + keys[n]] = std::max(s[n], 0.0) / keys.size();
        }
      }
    }
    return w;
  }

  SequenceOutput RunOne(const SequenceInput& seq) const {
    const ModelConfig& c = model_->config;
    const ModelWeights& wt = model_->weights;
    const size_t L = seq.length, d = c.d_model, H = c.num_heads, dh = c.d_head();
    const Matrix x = PositionedInput(seq);
    Matrix q = x, k = x, v = x;
    if (c.projections) {
      q = Linear(x, L, d, wt.q_weight, wt.q_bias, d);
      k = Linear(x, L, d, wt.k_weight, wt.k_bias, d);
      v = Linear(x, L, d, wt.v_weight, wt.v_bias, d);
    }
    if (c.positional == Positional::kRotary) {
      for (size_t p = 0; p < L; ++p) {
        for (size_t h = 0; h < H; ++h) {
          Rotate(&q[p * d + h * dh], dh, p);
          Rotate(&k[p * d + h * dh], dh, p);
        }
      }
    }
    const std::vector<bool> allowed = AllowedPairs(seq.mask, L);
    SequenceOutput out;
    Matrix context(L * d, 0.0), mean(L * L, 0.0);
    for (size_t h = 0; h < H; ++h) {
      const Matrix w = HeadWeights(q, k, allowed, L, h);
      for (size_t i = 0; i < L; ++i) {
        for (size_t j = 0; j < L; ++j) {
          for (size_t t = 0; t < dh; ++t) {
            context[i * d + h * dh + t] += w[i * L + j] * v[j * d + h * dh + t];
          }
        }
      }
      if (seq.weights == WeightsMode::kPerHead) {
        out.attention.emplace_back(w.begin(), w.end());
      }
      for (size_t n = 0; n < L * L; ++n) mean[n] += w[n] / H;
    }
    if (seq.weights == WeightsMode::kMean) out.attention.emplace_back(mean.begin(), mean.end());
    const Matrix y = c.projections ? Linear(context, L, d, wt.out_weight, wt.out_bias, d)
                                   : context;
    const std::span<float> dst =
        OutputRows(seq, OutputRowCount(seq), d, out);
    for (size_t k2 = 0; k2 < d; ++k2) {
      if (seq.pooling == Pooling::kNone) {
        for (size_t i = 0; i < L; ++i) dst[i * d + k2] = float(y[i * d + k2]);
      } else if (seq.pooling == Pooling::kFirst) {
        dst[k2] = float(y[k2]);
      } else {
        double sum = 0;
        for (size_t i = 0; i < L; ++i) sum += y[i * d + k2];
        dst[k2] = float(sum / L);
      }
    }
    return out;
  }

  const std::shared_ptr<const Model> model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateReferenceEngine(
    std::shared_ptr<const Model> model) {
  if (model == nullptr) return absl::InvalidArgumentError("model is null");
  absl::Status st = ValidateModelConfig(model->config, model->name);
  if (st.ok()) st = ValidateModelWeights(model->config, model->weights, model->name);
  if (!st.ok()) return st;
  return std::unique_ptr<Engine>(new ReferenceEngine(std::move(model)));
}

}  // namespace attnserve::core
