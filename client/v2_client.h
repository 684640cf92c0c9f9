// The client side of the Open Inference Protocol (KServe v2) for attnctl and
// the load generator: turns an attnserve.v1 AttendRequest into the equivalent
// ModelInferRequest (input `input` as raw FP32, BF16 or FP16; parameters
// causal, window, weights, pooling; input `edges` as INT64), calls
// ModelMetadata and ModelInfer with the client's deadline, token and retries,
// and reads replies. Functions are thread-safe; V2Client is too.
#ifndef ATTNSERVE_CLIENT_V2_CLIENT_H_
#define ATTNSERVE_CLIENT_V2_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "client/attention_client.h"
#include "client/load_generator.h"
#include "inference/v2/open_inference.grpc.pb.h"

namespace attnserve::client {

inline constexpr char kModelInferMethod[] = "/inference.GRPCInferenceService/ModelInfer";

// `request` as a ModelInferRequest whose input travels raw as `datatype`
// ("FP32", "BF16": rounded to nearest even, "FP16": IEEE half, rounded).
// INVALID_ARGUMENT for another datatype.
absl::StatusOr<inference::ModelInferRequest> ToModelInfer(const v1::AttendRequest& request,
                                                          const std::string& datatype);

// IEEE half bits of `x`, rounded to nearest even: overflow to infinity,
// subnormals kept, NaN stays NaN. Written out rather than through the
// compiler's _Float16, which clang 14 lacks on x86 (the fuzz build).
uint16_t FloatToFp16(float x);

// The reply as the v2 REST JSON shape: {"model_name", "model_version", "id",
// "parameters": {name: value}, "outputs": [{"name", "datatype", "shape",
// "data": [...]}]} with the raw FP32 outputs decoded.
std::string ModelInferJson(const inference::ModelInferResponse& reply);

// The Stats in a reply's parameters and the float count of its first raw
// output, read without copying the outputs; false for bytes that are not a
// ModelInferResponse.
bool ScanModelInferReply(grpc::ByteBuffer* reply, v1::Stats* stats, uint32_t* output_floats);

// One request of a load mix for ModelInfer: ToModelInfer(request, datatype).
absl::StatusOr<LoadRequest> MakeV2LoadRequest(const v1::AttendRequest& request, uint32_t d_model,
                                              const std::string& datatype);

// Writes each output of `reply` to PREFIX<name>.npy (float32, the output's
// shape); *paths receives the files written, in output order.
absl::Status WriteModelInferNpy(const inference::ModelInferResponse& reply,
                                const std::string& prefix, std::vector<std::string>* paths);

class V2Client {
 public:
  // Over the channel of `client` (which must outlive this), with its deadline,
  // token and UNAVAILABLE retries.
  explicit V2Client(AttentionClient* client);

  grpc::Status ModelMetadata(const std::string& model, inference::ModelMetadataResponse* reply);
  // The name and d_model (the last dimension of input `input`) of `model`
  // ("" = the server's default), from ModelMetadata.
  grpc::Status ModelWidth(const std::string& model, std::string* name, uint32_t* d_model);
  grpc::Status ModelInfer(const inference::ModelInferRequest& request,
                          inference::ModelInferResponse* reply);

 private:
  template <typename Call>
  grpc::Status WithRetries(Call call);

  AttentionClient* const client_;
  const std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_V2_CLIENT_H_
