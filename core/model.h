// Model: a loaded attention model (config + fp32 weights) and the loader that
// reads one model directory (config.json + weights.safetensors). A Model is a
// value type, immutable once loaded and safe to share between threads
// (engines hold it through std::shared_ptr<const Model>).
#ifndef ATTNSERVE_CORE_MODEL_H_
#define ATTNSERVE_CORE_MODEL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace attnserve::core {

// All tensors are fp32, row-major, in PyTorch's orientation (a projection
// weight is [out_features, in_features]; y = W x + b). BF16 tensors in the
// file are widened to fp32 at load; engines convert to their compute precision.
struct ModelWeights {
  // Projections; all empty when config.projections is false.
  std::vector<float> q_weight, k_weight, v_weight;  // d_model x d_model each
  std::vector<float> q_bias, k_bias, v_bias;        // d_model each (zeros when the file has none)
  std::vector<float> out_weight;                    // d_model x d_model
  std::vector<float> out_bias;                      // d_model (zeros when the file has none)
  // positional == kLearned: max_length x d_model, added to input row p.
  std::vector<float> pos_embedding;
  // relevance == kAdditive: num_heads x d_head; score = v_h . tanh(q_i + k_j).
  std::vector<float> additive_v;
};

struct Model {
  std::string name;  // the directory name; the name clients ask for
  std::string path;  // where it was loaded from ("" when built in memory)
  ModelConfig config;
  ModelWeights weights;
};

// Checks that every tensor `config` needs is present with the right size and
// that tensors it does not use are empty. Errors (INVALID_ARGUMENT) name
// `source`, the tensor and the expected shape.
absl::Status ValidateModelWeights(const ModelConfig& config,
                                  const ModelWeights& weights,
                                  std::string_view source);

// Loads DIR/config.json and DIR/weights.safetensors. The model's name is the
// last path component of `dir`. Every failure (missing file, malformed JSON,
// missing/unexpected tensor, wrong shape or dtype, header larger than the
// file, truncated data, non-finite values) is an error naming the file, the
// tensor and what was expected: INVALID_ARGUMENT, or NOT_FOUND for a missing
// file. A model that loads serves exactly the numbers in the file.
//
// Accepted tensor names (PyTorch nn.MultiheadAttention.state_dict()):
//   in_proj_weight [3d, d], in_proj_bias [3d], out_proj.weight [d, d],
//   out_proj.bias [d]; or separate q_proj.weight / k_proj.weight /
//   v_proj.weight [d, d] (also PyTorch's q_proj_weight spelling) with
//   optional q_proj.bias / k_proj.bias / v_proj.bias [d];
//   pos_embedding.weight [max_length, d]; additive_v [num_heads, d/num_heads].
absl::StatusOr<Model> LoadModel(const std::string& dir);

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_MODEL_H_
