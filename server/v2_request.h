// The mapping of attention onto the Open Inference Protocol (KServe v2):
// turns a ModelInferRequest into the sequences the batcher computes (viewing
// the request's raw FP32 bytes in place, decoding BF16/FP16 once), and lays
// out the ModelInferResponse they are written into. Pure functions on values
// the caller owns; thread-safe.
//
// The mapping (README "KServe v2"):
// - input `input`: FP32 (raw or contents), BF16 or FP16 (raw only), shape
//   [L, d_model] or [B, L, d_model] (B sequences of one length, each its own
//   sequence in the batcher); optional `edges`: INT32 or INT64, shape [E, 2],
//   the graph mask of every sequence.
// - parameters, on the request or on input `input` (both: must agree):
//   `causal` (bool), `window` (int64 or uint64, >= 0), `weights` ("none" |
//   "per_head" | "mean"), `pooling` ("none" | "mean" | "first"). Unknown
//   names are ignored, as Triton does (clients add their own, e.g.
//   `binary_data_output`); a known name with the wrong type or value is
//   INVALID_ARGUMENT.
// - outputs: `output` (FP32, [L, d], [B, L, d]; pooled [1, d], [B, 1, d]) and
//   `attention` (FP32; per_head [H, L, L] / [B, H, L, L], mean [L, L] /
//   [B, L, L]). None requested: `output`, plus `attention` when `weights` asks
//   for it. Requested: exactly those, in that order; asking for `attention`
//   without `weights` means per_head, with weights = "none" is an error.
// - every reply carries raw_output_contents (as Triton does), one per output.
#ifndef ATTNSERVE_SERVER_V2_REQUEST_H_
#define ATTNSERVE_SERVER_V2_REQUEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "core/engine.h"
#include "inference/v2/open_inference.pb.h"

namespace attnserve::server::v2 {

inline constexpr char kInputName[] = "input";
inline constexpr char kEdgesName[] = "edges";
inline constexpr char kOutputName[] = "output";
inline constexpr char kAttentionName[] = "attention";

// One output of the reply, in reply order.
enum class OutputKind { kOutput, kAttention };

// A validated request: B sequences of length L sharing one mask, weights mode
// and pooling. `sequences[b].data` views the request's raw bytes (FP32) or
// `decoded` (BF16, FP16, or FP32 raw bytes that were not float-aligned), so
// the request and this plan must outlive the sequences.
struct InferPlan {
  uint32_t batch = 1;        // B (1 for a rank-2 input)
  bool batched = false;      // the input had rank 3: outputs keep the B dimension
  uint32_t length = 0;       // L
  std::vector<float> decoded;
  std::vector<core::SequenceInput> sequences;  // B of them; output_buffer unset
  std::vector<OutputKind> outputs;             // reply order
  std::string input_datatype;                  // "FP32", "BF16" or "FP16"
};

// Checks `request` against the model and fills *plan. Errors name the tensor
// or parameter and say what was expected: INVALID_ARGUMENT (unknown or
// duplicate input/output, datatype, shape, raw size, raw and contents mixed,
// non-finite value, bad edge, parameter type/value), OUT_OF_RANGE (L over
// max_length with a positional encoding), RESOURCE_EXHAUSTED (the reply would
// exceed max_reply_bytes). Never allocates more than the request's own data
// size warrants: shapes are checked against the bytes actually sent first.
grpc::Status PlanInfer(const inference::ModelInferRequest& request, const std::string& model_name,
                       const core::ModelConfig& config, int64_t max_reply_bytes,
                       InferPlan* plan);

// Adds to *response the output tensors of `plan` (name, datatype, shape) and
// one raw_output_contents entry each, sized, and points every sequence's
// output_buffer at its slice of the `output` entry (or at `scratch`, sized
// here, when `output` was not requested), so the engine writes the reply in
// place. Returns the attention entry (nullptr when not requested).
std::string* LayOutResponse(const core::ModelConfig& config, InferPlan* plan,
                            inference::ModelInferResponse* response,
                            std::vector<float>* scratch);

// Copies sequence `index`'s attention matrices (the engine's) into its slice
// of the attention entry made by LayOutResponse.
void CopyAttention(const core::SequenceOutput& out, uint32_t index, uint32_t length,
                   std::string* attention);

// Fills a ModelMetadataResponse for a model.
void FillModelMetadata(const std::string& name, const std::string& version,
                       const core::ModelConfig& config,
                       inference::ModelMetadataResponse* response);

// The model's config as one JSON object (ModelMetadata's trailing metadata).
std::string ConfigJson(const core::ModelConfig& config);

// `text` (a name, datatype or value the client sent) as an error message
// quotes it: whole up to 64 bytes, else its first 64 bytes and its length,
// so a message never grows with the request (a grpc-message over the
// client's metadata limit would replace the status code).
std::string ClipForMessage(const std::string& text);

// Float conversions of the 16-bit wire types (exact; NaN and infinities kept,
// so validation rejects them as for FP32).
float Bf16ToFloat(uint16_t bits);
float Fp16ToFloat(uint16_t bits);

}  // namespace attnserve::server::v2

#endif  // ATTNSERVE_SERVER_V2_REQUEST_H_
