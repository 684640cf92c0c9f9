// End-to-end tests of KServe v2 ModelInfer over 127.0.0.1 against an
// in-process AttnServer on tests/golden/data, each reply compared with the
// reference engine: FP32 via contents and raw, BF16 and FP16 raw, batched
// [B, L, d], every parameter (causal, window, weights, pooling, INT32/INT64
// edges, on the request or on the tensor), requested outputs, Stats in the
// reply's parameters, v1 and v2 calls sharing one batch, and the metrics.
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/test_util.h"
#include "tests/v2_util.h"

namespace attnserve::testing {
namespace {

using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using v2::CallInfer;
using v2::MakeInfer;
using v2::Param;
using v2::SequenceAsV1;

class E2eV2InferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
    ASSERT_NE(server_, nullptr);
    stub_ = GRPCInferenceService::NewStub(LoopbackChannel(server_->port()));
  }

  // Sends `values` ([B?, L, d] per `shape`) with `params`, expects OK and
  // every sequence to equal the reference for `mask`/`weights`/`pooling`.
  void ExpectMatches(const std::string& model, const std::vector<int64_t>& shape,
                     const std::string& datatype, bool raw,
                     const std::map<std::string, Param>& params, const v1::Mask& mask,
                     v1::WeightsMode weights, v1::Pooling pooling,
                     const std::vector<uint32_t>& edges = {}, const std::string& edge_type = "",
                     bool params_on_tensor = false) {
    const uint32_t d = oracle_.config(model).d_model;
    const uint32_t L = static_cast<uint32_t>(shape[shape.size() - 2]);
    const uint32_t B = shape.size() == 3 ? static_cast<uint32_t>(shape[0]) : 1;
    const std::vector<float> values = RandomVector(rng_, size_t{B} * L * d, 1.0f);
    std::vector<float> seen;
    ModelInferRequest request =
        MakeInfer(model, shape, values, datatype, raw, params_on_tensor ? std::map<std::string, Param>{} : params, &seen);
    if (params_on_tensor) {
      for (const auto& [name, p] : params) {
        (*request.mutable_inputs(0)->mutable_parameters())[name] = v2::ToParameter(p);
      }
    }
    if (!edges.empty()) v2::AddEdges(edges, edge_type, &request);
    request.set_id(absl::StrCat("call-", ++calls_));
    ModelInferResponse reply;
    const grpc::Status status = CallInfer(*stub_, request, &reply);
    ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
    EXPECT_EQ(reply.id(), request.id());
    EXPECT_EQ(reply.model_name(), model);
    // The served version: the model's content version, as attnserve.v1's ModelInfo.version.
    EXPECT_EQ(reply.model_version(), server_->registry().Find(model)->version());
    ASSERT_EQ(reply.raw_output_contents_size(), reply.outputs_size());
    const int out = v2::OutputIndex(reply, "output");
    ASSERT_GE(out, 0);
    EXPECT_EQ(reply.outputs(out).datatype(), "FP32");
    std::vector<int64_t> want_shape;
    if (shape.size() == 3) want_shape.push_back(B);
    want_shape.push_back(pooling == v1::POOLING_NONE ? L : 1);
    want_shape.push_back(d);
    EXPECT_THAT(reply.outputs(out).shape(), ::testing::ElementsAreArray(want_shape));
    EXPECT_EQ(v2::OutputIndex(reply, "attention") >= 0, weights != v1::WEIGHTS_NONE);
    EXPECT_GE(v2::Stat(reply, "batch_size"), 1);
    EXPECT_GE(v2::Stat(reply, "batch_tokens"), L);
    EXPECT_GT(v2::Stat(reply, "compute_us"), 0);
    EXPECT_GE(v2::Stat(reply, "queue_us"), 0);
    for (uint32_t b = 0; b < B; ++b) {
      const v2::V1Pair p = SequenceAsV1(seen, b, L, d, mask, weights, pooling, reply);
      EXPECT_TRUE(oracle_.Matches(model, p.request, p.reply)) << "sequence " << b;
    }
  }

  std::unique_ptr<server::AttnServer> server_;
  std::unique_ptr<GRPCInferenceService::Stub> stub_;
  const ReferenceOracle oracle_{GoldenRepository()};
  std::mt19937 rng_{1313};
  int calls_ = 0;
};

TEST_F(E2eV2InferTest, Fp32ViaContentsAndRawEqualTheReference) {
  for (const std::string model : {"mha_plain", "mha_sinusoidal_sep", "rotary_manual"}) {
    const int64_t d = oracle_.config(model).d_model;
    for (bool raw : {false, true}) {
      SCOPED_TRACE(absl::StrCat(model, raw ? " raw" : " contents"));
      ExpectMatches(model, {7, d}, "FP32", raw, {}, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE);
      ExpectMatches(model, {1, d}, "FP32", raw, {}, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE);
    }
  }
}

TEST_F(E2eV2InferTest, Bf16AndFp16RawEqualTheReferenceOnTheDecodedValues) {
  for (const std::string type : {"BF16", "FP16"}) {
    SCOPED_TRACE(type);
    v1::Mask causal;
    causal.set_causal(true);
    ExpectMatches("mha_plain", {9, 32}, type, true, {{"causal", true}, {"weights", std::string("mean")}},
                  causal, v1::WEIGHTS_MEAN, v1::POOLING_NONE);
    ExpectMatches("mha_sinusoidal_sep", {2, 5, 64}, type, true, {}, {}, v1::WEIGHTS_NONE,
                  v1::POOLING_NONE);
  }
  // The decoder itself: a value each encoding holds exactly comes back as is.
  ModelInferRequest request = MakeInfer("mha_plain", {1, 32}, std::vector<float>(32, 0.0f), "FP16", true);
  std::vector<uint16_t> bits(32, v2::ToFp16(0.0f));
  bits[0] = 0x0001;  // the smallest subnormal, 2^-24
  bits[1] = 0xbc00;  // -1
  bits[2] = 0x7bff;  // 65504, the largest half
  request.set_raw_input_contents(0, v2::RawBytes(bits));
  ModelInferResponse reply;
  ASSERT_TRUE(CallInfer(*stub_, request, &reply).ok());
  std::vector<float> seen(32, 0.0f);
  seen[0] = std::ldexp(1.0f, -24);
  seen[1] = -1.0f;
  seen[2] = 65504.0f;
  const v2::V1Pair p = SequenceAsV1(seen, 0, 1, 32, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE, reply);
  EXPECT_TRUE(oracle_.Matches("mha_plain", p.request, p.reply));
}

TEST_F(E2eV2InferTest, BatchedInputIsBSequencesInOrder) {
  v1::Mask causal;
  causal.set_causal(true);
  for (bool raw : {true, false}) {
    ExpectMatches("mha_plain", {4, 6, 32}, "FP32", raw,
                  {{"causal", true}, {"weights", std::string("per_head")}}, causal,
                  v1::WEIGHTS_PER_HEAD, v1::POOLING_NONE);
    ExpectMatches("mha_plain", {3, 5, 32}, "FP32", raw, {{"pooling", std::string("first")}}, {},
                  v1::WEIGHTS_NONE, v1::POOLING_FIRST);
  }
  ExpectMatches("mha_plain", {1, 3, 32}, "FP32", true, {}, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE);
}

TEST_F(E2eV2InferTest, EveryParameterOnTheRequestOrOnTheTensor) {
  const std::vector<uint32_t> edges = {0, 0, 1, 0, 1, 1, 2, 1, 3, 3, 4, 0, 4, 2};  // row 5: no key
  struct Case {
    std::map<std::string, Param> params;
    bool causal;
    uint32_t window;
    v1::WeightsMode weights;
    v1::Pooling pooling;
  };
  const std::vector<Case> cases = {
      {{{"causal", true}}, true, 0, v1::WEIGHTS_NONE, v1::POOLING_NONE},
      {{{"causal", false}}, false, 0, v1::WEIGHTS_NONE, v1::POOLING_NONE},
      {{{"window", int64_t{2}}}, false, 2, v1::WEIGHTS_NONE, v1::POOLING_NONE},
      {{{"causal", true}, {"window", int64_t{1}}, {"weights", std::string("per_head")}}, true, 1,
       v1::WEIGHTS_PER_HEAD, v1::POOLING_NONE},
      {{{"weights", std::string("mean")}, {"pooling", std::string("mean")}}, false, 0,
       v1::WEIGHTS_MEAN, v1::POOLING_MEAN},
      {{{"weights", std::string("none")}, {"pooling", std::string("none")}}, false, 0,
       v1::WEIGHTS_NONE, v1::POOLING_NONE},
      {{{"pooling", std::string("first")}, {"ignored_by_attnserve", std::string("x")}}, false, 0,
       v1::WEIGHTS_NONE, v1::POOLING_FIRST},
  };
  int n = 0;
  for (const Case& c : cases) {
    for (bool on_tensor : {false, true}) {
      SCOPED_TRACE(absl::StrCat("case ", n++, on_tensor ? " on the tensor" : " on the request"));
      v1::Mask mask;
      mask.set_causal(c.causal);
      mask.set_window(c.window);
      ExpectMatches("mha_plain", {6, 32}, "FP32", true, c.params, mask, c.weights, c.pooling, {},
                    "", on_tensor);
    }
  }
  for (const std::string type : {"INT32", "INT64"}) {
    for (bool raw : {true, false}) {
      SCOPED_TRACE(absl::StrCat("edges ", type, raw ? " raw" : " contents"));
      v1::Mask mask;
      mask.mutable_edges()->Add(edges.begin(), edges.end());
      ExpectMatches("mha_plain", {6, 32}, "FP32", raw, {{"weights", std::string("per_head")}},
                    mask, v1::WEIGHTS_PER_HEAD, v1::POOLING_NONE, edges, type);
      ExpectMatches("mha_plain", {2, 6, 32}, "FP32", raw, {}, mask, v1::WEIGHTS_NONE,
                    v1::POOLING_NONE, edges, type);
    }
  }
}

TEST_F(E2eV2InferTest, RequestedOutputsAreExactlyThoseInThatOrder) {
  const std::vector<float> values = RandomVector(rng_, 5 * 32, 1.0f);
  auto call = [&](std::vector<std::string> outputs, std::map<std::string, Param> params) {
    ModelInferRequest r = MakeInfer("mha_plain", {5, 32}, values, "FP32", true, params);
    for (const std::string& o : outputs) r.add_outputs()->set_name(o);
    ModelInferResponse reply;
    const grpc::Status s = CallInfer(*stub_, r, &reply);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::vector<std::string> names;
    for (const auto& t : reply.outputs()) names.push_back(t.name());
    EXPECT_EQ(reply.raw_output_contents_size(), reply.outputs_size());
    return std::make_pair(names, reply);
  };
  using ::testing::ElementsAre;
  EXPECT_THAT(call({}, {}).first, ElementsAre("output"));
  EXPECT_THAT(call({}, {{"weights", std::string("mean")}}).first, ElementsAre("output", "attention"));
  EXPECT_THAT(call({"output"}, {{"weights", std::string("mean")}}).first, ElementsAre("output"));
  auto [names, reply] = call({"attention"}, {});  // no weights: per_head
  EXPECT_THAT(names, ElementsAre("attention"));
  EXPECT_THAT(reply.outputs(0).shape(), ElementsAre(4, 5, 5));
  auto [both, reply2] = call({"attention", "output"}, {{"weights", std::string("mean")}});
  EXPECT_THAT(both, ElementsAre("attention", "output"));
  EXPECT_THAT(reply2.outputs(0).shape(), ElementsAre(5, 5));
  const v2::V1Pair p =
      SequenceAsV1(values, 0, 5, 32, {}, v1::WEIGHTS_MEAN, v1::POOLING_NONE, reply2);
  EXPECT_TRUE(oracle_.Matches("mha_plain", p.request, p.reply));
  // Only the attention of a per_head call: still the reference's.
  v1::AttendRequest v1_request = p.request;
  v1_request.set_weights(v1::WEIGHTS_PER_HEAD);
  v2::V1Pair q = SequenceAsV1(values, 0, 5, 32, {}, v1::WEIGHTS_PER_HEAD, v1::POOLING_NONE, reply);
  *q.reply.mutable_output() = p.reply.output();  // the output came in the other call
  EXPECT_TRUE(oracle_.Matches("mha_plain", v1_request, q.reply));
}

// v1 and v2 calls wait in the same queue and share one batch.
TEST(E2eV2MixedTest, V1AndV2CallsShareOneBatch) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_batch_size = 3;
  options.batching.max_queue_delay_us = 5000000;  // only a full batch leaves early
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto channel = LoopbackChannel(server->port());
  auto v1_stub = v1::Attention::NewStub(channel);
  auto v2_stub = GRPCInferenceService::NewStub(channel);
  std::mt19937 rng(77);
  const v1::AttendRequest v1_request = RandomRequest(rng, "mha_plain", 32, 4);
  const std::vector<float> values = RandomVector(rng, 2 * 3 * 32, 1.0f);
  const ModelInferRequest v2_request = MakeInfer("mha_plain", {2, 3, 32}, values, "FP32", true);
  v1::AttendResponse v1_reply;
  ModelInferResponse v2_reply;
  grpc::Status v1_status, v2_status;
  std::latch start(2);
  std::thread a([&] {
    start.arrive_and_wait();
    v1_status = CallAttend(*v1_stub, v1_request, &v1_reply);
  });
  std::thread b([&] {
    start.arrive_and_wait();
    v2_status = CallInfer(*v2_stub, v2_request, &v2_reply);
  });
  a.join();
  b.join();
  ASSERT_TRUE(v1_status.ok()) << v1_status.error_message();
  ASSERT_TRUE(v2_status.ok()) << v2_status.error_message();
  // One batch of three sequences: the v1 one and the two of the v2 call.
  EXPECT_EQ(v1_reply.stats().batch_size(), 3u);
  EXPECT_EQ(v2::Stat(v2_reply, "batch_size"), 3);
  EXPECT_EQ(v2::Stat(v2_reply, "batch_tokens"), 4 + 3 + 3);
  EXPECT_TRUE(oracle.Matches("mha_plain", v1_request, v1_reply));
  for (uint32_t s = 0; s < 2; ++s) {
    const v2::V1Pair p =
        SequenceAsV1(values, s, 3, 32, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE, v2_reply);
    EXPECT_TRUE(oracle.Matches("mha_plain", p.request, p.reply));
  }
  // A v2 call is one request in attnserve_requests_total, its sequences
  // three tokens each in the batch metrics.
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_requests_total",
                         {{"model", "mha_plain"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_v2_requests_total",
                         {{"method", "ModelInfer"}, {"code", "OK"}}),
            1);
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_tokens_total", {{"model", "mha_plain"}}),
            10);
}

}  // namespace
}  // namespace attnserve::testing
