// Model loading: one model directory -> Model. The loader accepts exactly the
// tensors the config uses and rejects everything else (unknown, unused or
// ambiguous tensors), because a tensor we silently ignore means serving
// numbers that differ from the model that was trained.
#include "core/model.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status_util.h"
#include "core/model_config.h"
#include "core/safetensors.h"

namespace attnserve::core {
namespace {

// Tensor names, as PyTorch's nn.MultiheadAttention.state_dict() spells them.
constexpr char kInProjWeight[] = "in_proj_weight";
constexpr char kInProjBias[] = "in_proj_bias";
constexpr char kOutWeight[] = "out_proj.weight";
constexpr char kOutBias[] = "out_proj.bias";
constexpr char kPosEmbedding[] = "pos_embedding.weight";
constexpr char kAdditiveV[] = "additive_v";
// Separate q/k/v projections: our dotted spelling, then PyTorch's own (used
// when kdim/vdim differ from embed_dim).
constexpr const char* kSeparateWeights[3][2] = {
    {"q_proj.weight", "q_proj_weight"},
    {"k_proj.weight", "k_proj_weight"},
    {"v_proj.weight", "v_proj_weight"}};
constexpr const char* kSeparateBiases[3] = {"q_proj.bias", "k_proj.bias",
                                            "v_proj.bias"};

// The tensor names the file may hold under `config`.
std::set<std::string> AcceptedNames(const ModelConfig& config) {
  std::set<std::string> names;
  if (config.projections) {
    names = {kInProjWeight, kInProjBias, kOutWeight, kOutBias};
    for (const auto& spellings : kSeparateWeights) {
      names.insert(spellings[0]);
      names.insert(spellings[1]);
    }
    for (const char* bias : kSeparateBiases) names.insert(bias);
  }
  if (config.positional == Positional::kLearned) names.insert(kPosEmbedding);
  if (config.relevance == Relevance::kAdditive) names.insert(kAdditiveV);
  return names;
}

// Why `name` may not appear in a file for `config`, with the fix.
std::string WhyUnexpected(const ModelConfig& config, const std::string& name) {
  if (!config.projections && AcceptedNames(ModelConfig{}).count(name) != 0) {
    return "the config says parameter-free (\"projections\": false), so the "
           "file must hold no projection tensors";
  }
  if (name == kPosEmbedding) {
    return Cat(
        "only \"positional\": \"learned\" uses it; the config "
        "says \"",
        ToString(config.positional), "\"");
  }
  if (name == kAdditiveV) {
    return Cat(
        "only \"relevance\": \"additive\" uses it; the config "
        "says \"",
        ToString(config.relevance), "\"");
  }
  if (name == "bias_k" || name == "bias_v") {
    return "it comes from PyTorch's add_bias_kv=True, which attnserve does not "
           "support";
  }
  const std::set<std::string> accepted = AcceptedNames(config);
  return Cat("accepted tensors for this config: ",
             accepted.empty() ? "none" : Join(accepted, ", "));
}

absl::Status CheckNoUnexpectedTensors(const ModelConfig& config,
                                      const SafetensorsFile& file) {
  const std::set<std::string> accepted = AcceptedNames(config);
  for (const auto& [name, info] : file.tensors()) {
    if (accepted.count(name) == 0) {
      return Invalid(file.path(), Cat("unexpected tensor \"", name,
                                      "\": ", WhyUnexpected(config, name)));
    }
  }
  return absl::OkStatus();
}

// The name under which the file holds separate projection `i` (0 = q, 1 = k,
// 2 = v), "" when absent; an error when both spellings are present.
absl::StatusOr<std::string> SeparateWeightName(const SafetensorsFile& file,
                                               int i) {
  const bool dotted = file.Has(kSeparateWeights[i][0]);
  const bool torch = file.Has(kSeparateWeights[i][1]);
  if (dotted && torch) {
    return Invalid(
        file.path(),
        Cat("ambiguous tensors \"", kSeparateWeights[i][0], "\" and \"",
            kSeparateWeights[i][1], "\": keep one of them"));
  }
  return std::string(dotted  ? kSeparateWeights[i][0]
                     : torch ? kSeparateWeights[i][1]
                             : "");
}

// Reads packed tensor `name` (shape[0] = 3d) and splits it into thirds:
// PyTorch packs rows [0, d) = q, [d, 2d) = k, [2d, 3d) = v.
absl::Status ReadPacked(const SafetensorsFile& file, const char* name,
                        const std::vector<int64_t>& shape,
                        std::vector<float>* const outs[3]) {
  absl::StatusOr<std::vector<float>> packed = file.ReadF32(name, shape);
  if (!packed.ok()) return packed.status();
  const size_t third = packed->size() / 3;
  for (size_t i = 0; i < 3; ++i) {
    outs[i]->assign(packed->begin() + i * third,
                    packed->begin() + (i + 1) * third);
  }
  return absl::OkStatus();
}

// Reads the q, k, v weights from either layout into `w`.
absl::Status LoadQkvWeights(const SafetensorsFile& file, int64_t d,
                            ModelWeights* w) {
  std::vector<float>* const outs[3] = {&w->q_weight, &w->k_weight,
                                       &w->v_weight};
  std::string names[3];
  bool any_separate = false;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::string> name = SeparateWeightName(file, i);
    if (!name.ok()) return name.status();
    names[i] = *name;
    any_separate = any_separate || !names[i].empty();
  }
  if (file.Has(kInProjWeight)) {
    if (any_separate) {
      return Invalid(file.path(),
                     Cat("ambiguous projections: both \"", kInProjWeight,
                         "\" and separate q/k/v_proj weights are present; keep "
                         "one layout"));
    }
    return ReadPacked(file, kInProjWeight, {3 * d, d}, outs);
  }
  if (!any_separate) {
    return Invalid(file.path(),
                   Cat("missing tensor \"", kInProjWeight,
                       "\" (expected F32 or BF16 [", 3 * d, ", ", d,
                       "]), or separate \"q_proj.weight\", \"k_proj.weight\", "
                       "\"v_proj.weight\" [",
                       d, ", ", d, "]"));
  }
  for (int i = 0; i < 3; ++i) {
    // ReadF32 reports a missing one under its dotted name.
    const std::string name =
        names[i].empty() ? kSeparateWeights[i][0] : names[i];
    absl::StatusOr<std::vector<float>> values = file.ReadF32(name, {d, d});
    if (!values.ok()) return values.status();
    *outs[i] = *std::move(values);
  }
  return absl::OkStatus();
}

// Reads the optional q, k, v biases (packed or separate) into `w`; zeros when
// the file has none.
absl::Status LoadQkvBiases(const SafetensorsFile& file, int64_t d,
                           ModelWeights* w) {
  std::vector<float>* const outs[3] = {&w->q_bias, &w->k_bias, &w->v_bias};
  bool any_separate = false;
  for (const char* name : kSeparateBiases)
    any_separate = any_separate || file.Has(name);
  if (file.Has(kInProjBias)) {
    if (any_separate) {
      return Invalid(
          file.path(),
          Cat("ambiguous biases: both \"", kInProjBias,
              "\" and separate q/k/v_proj.bias are present; keep one layout"));
    }
    return ReadPacked(file, kInProjBias, {3 * d}, outs);
  }
  for (int i = 0; i < 3; ++i) {
    if (!file.Has(kSeparateBiases[i])) {
      outs[i]->assign(d, 0.0f);
      continue;
    }
    absl::StatusOr<std::vector<float>> values =
        file.ReadF32(kSeparateBiases[i], {d});
    if (!values.ok()) return values.status();
    *outs[i] = *std::move(values);
  }
  return absl::OkStatus();
}

// Reads tensor `name` into `out`; when `optional` and absent, fills `out`
// with `zeros` zeros instead.
absl::Status ReadInto(const SafetensorsFile& file, const std::string& name,
                      const std::vector<int64_t>& shape, bool optional,
                      size_t zeros, std::vector<float>* out) {
  if (optional && !file.Has(name)) {
    out->assign(zeros, 0.0f);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<float>> values = file.ReadF32(name, shape);
  if (!values.ok()) return values.status();
  *out = *std::move(values);
  return absl::OkStatus();
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config,
                                         const SafetensorsFile& file) {
  if (absl::Status s = CheckNoUnexpectedTensors(config, file); !s.ok())
    return s;
  const int64_t d = config.d_model;
  ModelWeights w;
  if (config.projections) {
    absl::Status s = LoadQkvWeights(file, d, &w);
    if (s.ok()) s = LoadQkvBiases(file, d, &w);
    if (s.ok()) s = ReadInto(file, kOutWeight, {d, d}, false, 0, &w.out_weight);
    if (s.ok()) s = ReadInto(file, kOutBias, {d}, true, d, &w.out_bias);
    if (!s.ok()) return s;
  }
  if (config.positional == Positional::kLearned) {
    absl::Status s =
        ReadInto(file, kPosEmbedding, {int64_t{config.max_length}, d}, false, 0,
                 &w.pos_embedding);
    if (!s.ok()) return s;
  }
  if (config.relevance == Relevance::kAdditive) {
    absl::Status s = ReadInto(
        file, kAdditiveV, {int64_t{config.num_heads}, int64_t{config.d_head()}},
        false, 0, &w.additive_v);
    if (!s.ok()) return s;
  }
  return w;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path,
                                         const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    const bool dir_exists = std::filesystem::is_directory(dir, ec);
    return absl::NotFoundError(Cat(
        path, ": no such file",
        dir_exists ? ""
                   : Cat(" (model directory \"", dir, "\" does not exist)")));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return Invalid(path, "cannot open for reading");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The name clients use: the last path component, "." and ".." resolved.
std::string ModelName(const std::string& dir) {
  std::string name = std::filesystem::path(dir).filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code ec;
    name = std::filesystem::weakly_canonical(dir, ec).filename().string();
  }
  return name;
}

absl::Status CheckSize(const std::vector<float>& v, size_t expected,
                       std::string_view source, std::string_view field,
                       std::string_view shape) {
  if (v.size() != expected) {
    return Invalid(source, Cat(field, " must hold ", expected, " values (",
                               shape, "); holds ", v.size()));
  }
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return Invalid(source, Cat(field,
                                 " holds a non-finite value at "
                                 "flat index ",
                                 i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelWeights(const ModelConfig& config,
                                  const ModelWeights& weights,
                                  std::string_view source) {
  if (absl::Status s = ValidateModelConfig(config, source); !s.ok()) return s;
  const size_t d = config.d_model;
  const bool proj = config.projections;
  const std::string dd = Cat("[", d, ", ", d, "]");
  const std::string d1 = Cat("[", d, "]");
  const std::string none = "absent: unused by this config";
  struct Field {
    const std::vector<float>* values;
    const char* name;
    size_t expected;
    std::string shape;
  };
  const Field fields[] = {
      {&weights.q_weight, "q_weight", proj ? d * d : 0, proj ? dd : none},
      {&weights.k_weight, "k_weight", proj ? d * d : 0, proj ? dd : none},
      {&weights.v_weight, "v_weight", proj ? d * d : 0, proj ? dd : none},
      {&weights.out_weight, "out_weight", proj ? d * d : 0, proj ? dd : none},
      {&weights.q_bias, "q_bias", proj ? d : 0, proj ? d1 : none},
      {&weights.k_bias, "k_bias", proj ? d : 0, proj ? d1 : none},
      {&weights.v_bias, "v_bias", proj ? d : 0, proj ? d1 : none},
      {&weights.out_bias, "out_bias", proj ? d : 0, proj ? d1 : none},
  };
  for (const Field& f : fields) {
    if (absl::Status s =
            CheckSize(*f.values, f.expected, source, f.name, f.shape);
        !s.ok()) {
      return s;
    }
  }
  const bool learned = config.positional == Positional::kLearned;
  const bool additive = config.relevance == Relevance::kAdditive;
  absl::Status s = CheckSize(
      weights.pos_embedding, learned ? size_t{config.max_length} * d : 0,
      source, kPosEmbedding,
      learned
          ? Cat("[max_length, d_model] = [", config.max_length, ", ", d, "]")
          : none);
  if (s.ok()) {
    s = CheckSize(weights.additive_v, additive ? d : 0, source, kAdditiveV,
                  additive ? Cat("[num_heads, d_head] = [", config.num_heads,
                                 ", ", config.d_head(), "]")
                           : none);
  }
  return s;
}

absl::StatusOr<Model> LoadModel(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty())
    return absl::InvalidArgumentError("LoadModel: empty model directory");

  const std::string config_path = dir + "/config.json";
  absl::StatusOr<std::string> text = ReadTextFile(config_path, dir);
  if (!text.ok()) return text.status();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(*text, config_path);
  if (!config.ok()) return config.status();

  const std::string weights_path = dir + "/weights.safetensors";
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(weights_path);
  if (!file.ok()) return file.status();
  absl::StatusOr<ModelWeights> weights = LoadWeights(*config, *file);
  if (!weights.ok()) return weights.status();
  // Redundant after a successful load; it guards the loader itself.
  if (absl::Status s = ValidateModelWeights(*config, *weights, weights_path);
      !s.ok()) {
    return s;
  }

  Model model;
  model.name = ModelName(dir);
  model.path = dir;
  model.config = *std::move(config);
  model.weights = *std::move(weights);
  return model;
}

}  // namespace attnserve::core
