// End-to-end tests of the KServe v2 service over 127.0.0.1 (in-process
// AttnServer on tests/golden/data): ServerLive, ServerReady, ModelReady,
// ServerMetadata, ModelMetadata; reflection lists the service; every error a
// client can cause returns its code naming the tensor or parameter; a
// batched call whose queue overflows fails whole; draining refuses new calls
// and answers the accepted one; tokens guard v2 calls but the two probes.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/fake_engines.h"
#include "tests/test_util.h"
#include "tests/tls_util.h"
#include "tests/v2_util.h"

namespace attnserve::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using v2::CallInfer;
using v2::MakeInfer;

template <typename Req, typename Resp, typename Method>
grpc::Status Call(GRPCInferenceService::Stub& stub, Method method, const Req& request,
                  Resp* reply, const std::string& token = "",
                  std::multimap<std::string, std::string>* trailers = nullptr) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(10000));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  grpc::Status s = (stub.*method)(&context, request, reply);
  if (trailers != nullptr) {
    for (const auto& [k, v] : context.GetServerTrailingMetadata()) {
      trailers->emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    }
  }
  return s;
}

bool ServerReady(GRPCInferenceService::Stub& stub) {
  inference::ServerReadyResponse r;
  return Call(stub, &GRPCInferenceService::Stub::ServerReady, inference::ServerReadyRequest(), &r)
             .ok() &&
         r.ready();
}

bool ModelReady(GRPCInferenceService::Stub& stub, const std::string& name,
                const std::string& version = "") {
  inference::ModelReadyRequest q;
  q.set_name(name);
  q.set_version(version);
  inference::ModelReadyResponse r;
  const grpc::Status s = Call(stub, &GRPCInferenceService::Stub::ModelReady, q, &r);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return r.ready();
}

TEST(E2eV2RpcTest, EveryRpcAndReflection) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto channel = LoopbackChannel(server->port());
  auto stub = GRPCInferenceService::NewStub(channel);
  inference::ServerLiveResponse live;
  ASSERT_TRUE(Call(*stub, &GRPCInferenceService::Stub::ServerLive, inference::ServerLiveRequest(),
                   &live).ok());
  EXPECT_TRUE(live.live());
  EXPECT_TRUE(ServerReady(*stub));
  // A model's one version is its content version (attnserve.v1 ModelInfo.version).
  const std::string plain_version = server->registry().Find("mha_plain")->version();
  ASSERT_EQ(plain_version.size(), 12u);
  EXPECT_TRUE(ModelReady(*stub, "mha_plain"));
  EXPECT_TRUE(ModelReady(*stub, "mha_plain", plain_version));
  EXPECT_FALSE(ModelReady(*stub, "mha_plain", "1"));
  EXPECT_FALSE(ModelReady(*stub, "no_such_model"));

  inference::ServerMetadataResponse meta;
  ASSERT_TRUE(Call(*stub, &GRPCInferenceService::Stub::ServerMetadata,
                   inference::ServerMetadataRequest(), &meta).ok());
  EXPECT_EQ(meta.name(), "attnserve");
  EXPECT_FALSE(meta.version().empty());

  inference::ModelMetadataRequest mq;
  mq.set_name("mha_sinusoidal_sep");
  inference::ModelMetadataResponse mm;
  std::multimap<std::string, std::string> trailers;
  ASSERT_TRUE(
      Call(*stub, &GRPCInferenceService::Stub::ModelMetadata, mq, &mm, "", &trailers).ok());
  EXPECT_EQ(mm.name(), "mha_sinusoidal_sep");
  EXPECT_EQ(mm.platform(), "attnserve");
  EXPECT_THAT(mm.versions(),
              ElementsAre(server->registry().Find("mha_sinusoidal_sep")->version()));
  ASSERT_EQ(mm.inputs_size(), 2);
  EXPECT_EQ(mm.inputs(0).name(), "input");
  EXPECT_EQ(mm.inputs(0).datatype(), "FP32");
  EXPECT_THAT(mm.inputs(0).shape(), ElementsAre(-1, -1, 64));
  EXPECT_EQ(mm.inputs(1).name(), "edges");
  EXPECT_THAT(mm.inputs(1).shape(), ElementsAre(-1, 2));
  ASSERT_EQ(mm.outputs_size(), 2);
  EXPECT_EQ(mm.outputs(0).name(), "output");
  EXPECT_THAT(mm.outputs(0).shape(), ElementsAre(-1, -1, 64));
  EXPECT_EQ(mm.outputs(1).name(), "attention");
  EXPECT_THAT(mm.outputs(1).shape(), ElementsAre(-1, 8, -1, -1));
  auto config = trailers.find("attnserve-model-config");
  ASSERT_NE(config, trailers.end());
  const std::string& json = config->second;
  EXPECT_THAT(json, HasSubstr("\"d_model\":64"));
  EXPECT_THAT(json, HasSubstr("\"positional\":\"sinusoidal\""));
  for (const auto& [name, version] : std::vector<std::pair<std::string, std::string>>{
           {"no_such_model", ""}, {"mha_plain", "7"}}) {
    mq.set_name(name);
    mq.set_version(version);
    const grpc::Status s = Call(*stub, &GRPCInferenceService::Stub::ModelMetadata, mq, &mm);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << name;
  }
  std::vector<std::string> services;
  ASSERT_TRUE(ReflectionListServices(channel, &services).ok());
  EXPECT_THAT(services, ::testing::Contains("inference.GRPCInferenceService"));
  EXPECT_THAT(services, ::testing::Contains("attnserve.v1.Attention"));
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_v2_requests_total",
                         {{"method", "ModelMetadata"}, {"code", "NOT_FOUND"}}),
            2);
}

struct ErrorCase {
  std::string name;
  std::function<void(ModelInferRequest*)> spoil;
  grpc::StatusCode code;
  std::vector<std::string> message_parts;
};

void SetParam(ModelInferRequest* r, const std::string& name, const v2::Param& p) {
  (*r->mutable_parameters())[name] = v2::ToParameter(p);
}

std::vector<ErrorCase> ErrorCases() {
  using grpc::StatusCode;
  const StatusCode kInvalid = StatusCode::INVALID_ARGUMENT;
  auto shape = [](std::vector<int64_t> s) {
    return [s](ModelInferRequest* r) {
      r->mutable_inputs(0)->clear_shape();
      for (int64_t d : s) r->mutable_inputs(0)->add_shape(d);
    };
  };
  return {
      {"unknown model", [](auto* r) { r->set_model_name("nope"); }, StatusCode::NOT_FOUND,
       {"'nope'", "mha_plain"}},
      {"unknown version", [](auto* r) { r->set_model_version("3"); }, StatusCode::NOT_FOUND,
       {"version '3'"}},
      {"datatype", [](auto* r) { r->mutable_inputs(0)->set_datatype("INT8"); }, kInvalid,
       {"input 'input'", "INT8", "FP32, BF16 or FP16"}},
      {"rank 1", shape({128}), kInvalid, {"input 'input'", "[L, 32]"}},
      {"d_model", shape({4, 33}), kInvalid, {"input 'input'", "d_model = 32"}},
      {"zero rows", shape({0, 32}), kInvalid, {"input 'input'", "dimension 0 = 0"}},
      {"negative", shape({-4, 1, 32}), kInvalid, {"dimension 0 = -4"}},
      {"overflow", shape({int64_t{1} << 40, int64_t{1} << 40, 32}), kInvalid,
       {"more elements"}},
      {"raw size", [](auto* r) { r->mutable_raw_input_contents(0)->pop_back(); }, kInvalid,
       {"input 'input'", "511 bytes", "512"}},
      {"raw count", [](auto* r) { r->add_raw_input_contents("x"); }, kInvalid,
       {"2 entries for 1 inputs"}},
      {"raw and contents",
       [](auto* r) { r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1); }, kInvalid,
       {"input 'input'", "raw_input_contents"}},
      {"bf16 contents",
       [](auto* r) {
         r->clear_raw_input_contents();
         r->mutable_inputs(0)->set_datatype("BF16");
       },
       kInvalid, {"BF16", "raw_input_contents"}},
      {"contents count",
       [](auto* r) {
         r->clear_raw_input_contents();
         r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
       },
       kInvalid, {"fp32_contents has 1 values", "128"}},
      {"nan",
       [](auto* r) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(r->mutable_raw_input_contents(0)->data() + 8, &nan, 4);
       },
       kInvalid, {"input 'input'", "not finite"}},
      {"unknown input", [](auto* r) { r->mutable_inputs(0)->set_name("x"); }, kInvalid,
       {"unknown input 'x'"}},
      {"missing input",
       [](auto* r) {
         r->clear_inputs();
         r->clear_raw_input_contents();
       },
       kInvalid, {"missing input 'input'"}},
      {"duplicate input",
       [](auto* r) {
         *r->add_inputs() = r->inputs(0);
         r->add_raw_input_contents(r->raw_input_contents(0));
       },
       kInvalid, {"'input' given twice"}},
      {"causal type", [](auto* r) { SetParam(r, "causal", std::string("yes")); }, kInvalid,
       {"parameter 'causal'", "bool_param"}},
      {"window negative", [](auto* r) { SetParam(r, "window", int64_t{-1}); }, kInvalid,
       {"parameter 'window'", "[0, 4294967295]"}},
      {"window type", [](auto* r) { SetParam(r, "window", true); }, kInvalid,
       {"parameter 'window'", "int64_param"}},
      {"weights value", [](auto* r) { SetParam(r, "weights", std::string("all")); }, kInvalid,
       {"parameter 'weights'", "'all'", "per_head"}},
      {"pooling value", [](auto* r) { SetParam(r, "pooling", std::string("max")); }, kInvalid,
       {"parameter 'pooling'", "'max'"}},
      {"conflict",
       [](auto* r) {
         SetParam(r, "causal", true);
         (*r->mutable_inputs(0)->mutable_parameters())["causal"] = v2::ToParameter(false);
       },
       kInvalid, {"'causal'", "different values"}},
      {"edge range", [](auto* r) { v2::AddEdges({0, 0, 1, 4}, "INT64", r); }, kInvalid,
       {"input 'edges'", "value 4", "[0, 4)"}},
      {"edge negative", [](auto* r) { v2::AddEdges({0, 0, 1, static_cast<uint32_t>(-1)}, "INT32", r); },
       kInvalid, {"input 'edges'", "value -1"}},
      {"edge shape",
       [](auto* r) {
         v2::AddEdges({0, 0, 1, 1}, "INT64", r);
         r->mutable_inputs(1)->clear_shape();
         r->mutable_inputs(1)->add_shape(4);
       },
       kInvalid, {"input 'edges'", "[E, 2]"}},
      {"edge type",
       [](auto* r) {
         v2::AddEdges({0, 0}, "INT64", r);
         r->mutable_inputs(1)->set_datatype("FP32");
       },
       kInvalid, {"input 'edges'", "INT32 or INT64"}},
      {"unknown output", [](auto* r) { r->add_outputs()->set_name("logits"); }, kInvalid,
       {"unknown output 'logits'"}},
      {"duplicate output",
       [](auto* r) {
         r->add_outputs()->set_name("output");
         r->add_outputs()->set_name("output");
       },
       kInvalid, {"output 'output' requested twice"}},
      {"attention without weights",
       [](auto* r) {
         SetParam(r, "weights", std::string("none"));
         r->add_outputs()->set_name("attention");
       },
       kInvalid, {"output 'attention'", "'none'"}},
      {"too long",
       [](auto* r) {
         r->set_model_name("mha_sinusoidal_sep");  // max_length 64, d_model 64
         r->mutable_inputs(0)->clear_shape();
         r->mutable_inputs(0)->add_shape(65);
         r->mutable_inputs(0)->add_shape(64);
         r->set_raw_input_contents(0, std::string(65 * 64 * 4, '\0'));
       },
       StatusCode::OUT_OF_RANGE, {"65", "64"}},
  };
}

TEST(E2eV2RpcTest, EveryErrorHasItsCodeAndNamesTheTensorOrParameter) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = LoopbackChannel(server->port());
  auto stub = GRPCInferenceService::NewStub(channel);
  std::mt19937 rng(5);
  const ModelInferRequest good =
      MakeInfer("mha_plain", {4, 32}, RandomVector(rng, 4 * 32, 1.0f), "FP32", true);
  ModelInferResponse reply;
  ASSERT_TRUE(CallInfer(*stub, good, &reply).ok());
  for (const ErrorCase& c : ErrorCases()) {
    SCOPED_TRACE(c.name);
    ModelInferRequest bad = good;
    c.spoil(&bad);
    const grpc::Status s = CallInfer(*stub, bad, &reply);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    for (const std::string& part : c.message_parts) EXPECT_THAT(s.error_message(), HasSubstr(part));
  }
  // Bytes that are no ModelInferRequest.
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(10000));
  grpc::ByteBuffer out;
  const grpc::ByteBuffer garbage = ToByteBuffer("\x0a\xff\xff\xff\xff\x0f");
  grpc::Status s;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(&context, "/inference.GRPCInferenceService/ModelInfer", {},
                    &garbage, &out, [&](grpc::Status st) {
                      std::lock_guard<std::mutex> lock(mu);
                      s = st;
                      done = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("inference.ModelInferRequest"));
  // Still serving.
  EXPECT_TRUE(CallInfer(*stub, good, &reply).ok());
}

// Error messages quote what the client sent, but never unbounded: a shape of
// a million dimensions, a megabyte-long tensor name or parameter value must
// come back as INVALID_ARGUMENT with a short message (a grpc-message trailer
// over the client's 8 KiB metadata limit would replace the code), and the
// server keeps serving.
TEST(E2eV2RpcTest, ErrorMessagesQuoteClientInputBounded) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(11);
  const ModelInferRequest good =
      MakeInfer("mha_plain", {4, 32}, RandomVector(rng, 4 * 32, 1.0f), "FP32", true);
  const std::string long_text(1 << 20, 'x');
  struct Case {
    const char* name;
    std::function<void(ModelInferRequest*)> spoil;
    const char* part;
  };
  const std::vector<Case> cases = {
      {"many dims",
       [](ModelInferRequest* r) {
         auto* shape = r->mutable_inputs(0)->mutable_shape();
         shape->Clear();
         for (int i = 0; i < (1 << 20); ++i) shape->Add(1);
       },
       "input 'input'"},
      {"many dims, edges",
       [](ModelInferRequest* r) {
         v2::AddEdges({0, 1}, "INT64", r);
         auto* shape = r->mutable_inputs(1)->mutable_shape();
         for (int i = 0; i < (1 << 20); ++i) shape->Add(2);
       },
       "input 'edges'"},
      {"long input name", [&](ModelInferRequest* r) { r->mutable_inputs(0)->set_name(long_text); },
       "unknown input"},
      {"long output name", [&](ModelInferRequest* r) { r->add_outputs()->set_name(long_text); },
       "unknown output"},
      {"long datatype",
       [&](ModelInferRequest* r) { r->mutable_inputs(0)->set_datatype(long_text); }, "datatype"},
      {"long weights value",
       [&](ModelInferRequest* r) {
         (*r->mutable_parameters())["weights"].set_string_param(long_text);
       },
       "parameter 'weights'"},
  };
  ModelInferResponse reply;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ModelInferRequest bad = good;
    c.spoil(&bad);
    const grpc::Status s = CallInfer(*stub, bad, &reply);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << s.error_message().substr(0, 200);
    EXPECT_THAT(s.error_message(), HasSubstr(c.part));
    EXPECT_LT(s.error_message().size(), 1024u);
  }
  // Unknown model and version (NOT_FOUND), ModelInfer and ModelMetadata.
  ModelInferRequest bad = good;
  bad.set_model_name(long_text);
  grpc::Status s = CallInfer(*stub, bad, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message().substr(0, 200);
  EXPECT_LT(s.error_message().size(), 1024u);
  bad = good;
  bad.set_model_version(long_text);
  s = CallInfer(*stub, bad, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message().substr(0, 200);
  EXPECT_LT(s.error_message().size(), 1024u);
  inference::ModelMetadataRequest mq;
  mq.set_name(long_text);
  inference::ModelMetadataResponse mm;
  s = Call(*stub, &GRPCInferenceService::Stub::ModelMetadata, mq, &mm);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message().substr(0, 200);
  EXPECT_LT(s.error_message().size(), 1024u);
  EXPECT_TRUE(CallInfer(*stub, good, &reply).ok());
}

TEST(E2eV2RpcTest, ReplyOverTheMessageLimitIsResourceExhausted) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.max_message_bytes = 64 * 1024;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(6);
  ModelInferRequest r = MakeInfer("mha_plain", {64, 32}, RandomVector(rng, 64 * 32, 1.0f), "FP32",
                                  true, {{"weights", std::string("per_head")}});
  ModelInferResponse reply;
  const grpc::Status s = CallInfer(*stub, r, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("max message size"));
  // A sequence the model cannot take is OUT_OF_RANGE, as in attnserve.v1,
  // even when its reply would also be too large.
  r = MakeInfer("mha_sinusoidal_sep", {65, 64}, RandomVector(rng, 65 * 64, 1.0f), "FP32", true,
                {{"weights", std::string("per_head")}});
  const grpc::Status too_long = CallInfer(*stub, r, &reply);
  EXPECT_EQ(too_long.error_code(), grpc::StatusCode::OUT_OF_RANGE) << too_long.error_message();
  EXPECT_THAT(too_long.error_message(), HasSubstr("max_length 64"));
}

TEST(E2eV2RpcTest, BatchedCallFailsWholeWhenTheQueueOverflowsAndComputesNothing) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_size = 2;
  options.batching.max_queue_delay_us = 300000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(8);
  ModelInferRequest r =
      MakeInfer("mha_plain", {3, 4, 32}, RandomVector(rng, 3 * 4 * 32, 1.0f), "FP32", true);
  ModelInferResponse reply;
  const grpc::Status s = CallInfer(*stub, r, &reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // The two sequences that were queued were dropped, never computed.
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_tokens_total", {{"model", "mha_plain"}}), 0);
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_requests_total",
                         {{"model", "mha_plain"}, {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  // Two sequences fit.
  r = MakeInfer("mha_plain", {2, 4, 32}, RandomVector(rng, 2 * 4 * 32, 1.0f), "FP32", true);
  EXPECT_TRUE(CallInfer(*stub, r, &reply).ok());
}

TEST(E2eV2RpcTest, DrainingRefusesNewCallsAndAnswersTheAcceptedOne) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<bool> in_engine{false};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    in_engine = true;
    release.Wait(std::chrono::seconds(30));
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.drain_timeout_ms = 30000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(9);
  const std::vector<float> values = RandomVector(rng, 5 * 32, 1.0f);
  const ModelInferRequest held = MakeInfer("mha_plain", {5, 32}, values, "FP32", true);
  ModelInferResponse held_reply;
  grpc::Status held_status;
  std::thread client([&] { held_status = CallInfer(*stub, held, &held_reply); });
  ASSERT_TRUE(WaitFor([&] { return in_engine.load(); }, std::chrono::seconds(10)));
  std::thread drainer([&] { server->Drain(); });
  EXPECT_TRUE(WaitFor([&] { return !ServerReady(*stub); }, std::chrono::seconds(5)));
  EXPECT_FALSE(ModelReady(*stub, "mha_plain"));
  ModelInferResponse reply;
  const grpc::Status refused = CallInfer(*stub, held, &reply);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("draining"));
  release.Open();
  client.join();
  drainer.join();
  ASSERT_TRUE(held_status.ok()) << held_status.error_message();
  const v2::V1Pair p =
      v2::SequenceAsV1(values, 0, 5, 32, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE, held_reply);
  EXPECT_TRUE(oracle.Matches("mha_plain", p.request, p.reply));
}

// A batched call whose deadline passes while its first sequence computes and
// the other two wait in the queue: the two are dropped, never computed; the
// call is answered once (counted DEADLINE_EXCEEDED or CANCELLED) when the
// computing one returns, after the client is gone; nothing stays in flight.
TEST(E2eV2RpcTest, BatchedCallGoneWhileQueuedDropsItsSiblings) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<bool> in_engine{false};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    in_engine = true;
    release.Wait(std::chrono::seconds(30));
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.batching.max_batch_size = 1;  // one sequence per batch
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(12);
  const ModelInferRequest batched =
      MakeInfer("mha_plain", {3, 4, 32}, RandomVector(rng, 3 * 4 * 32, 1.0f), "FP32", true);
  ModelInferResponse reply;
  const grpc::Status gone = CallInfer(*stub, batched, &reply, /*deadline_ms=*/1500);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << gone.error_message();
  ASSERT_TRUE(in_engine.load());
  release.Open();
  auto failed = [&] {
    return CounterValue(server->metrics(), "attnserve_requests_total",
                        {{"model", "mha_plain"}, {"code", "DEADLINE_EXCEEDED"}}) +
           CounterValue(server->metrics(), "attnserve_requests_total",
                        {{"model", "mha_plain"}, {"code", "CANCELLED"}});
  };
  ASSERT_TRUE(WaitFor([&] { return failed() == 1; }, std::chrono::seconds(10)));
  EXPECT_EQ(state->runs.load(), 1);  // the two queued siblings were never computed
  // Still serving; then a drain finds nothing unanswered.
  const ModelInferRequest good =
      MakeInfer("mha_plain", {2, 4, 32}, RandomVector(rng, 2 * 4 * 32, 1.0f), "FP32", true);
  const grpc::Status ok = CallInfer(*stub, good, &reply);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(state->runs.load(), 3);
  EXPECT_TRUE(server->Drain());
  EXPECT_EQ(failed(), 1);
}

// Draining while a batched call is partly computed: its other sequences are
// still computed and the call is answered whole, then the drain completes.
TEST(E2eV2RpcTest, DrainFinishesAPartlyComputedBatchedCall) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    release.Wait(std::chrono::seconds(30));
    return absl::OkStatus();
  };
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.engine_factory = HookedEngineFactory(state);
  options.batching.max_batch_size = 1;
  options.drain_timeout_ms = 30000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(13);
  // Many sequences: the drain starts while the call may still be submitting
  // them; every one must still be taken and computed.
  constexpr uint32_t kB = 200;
  const std::vector<float> values = RandomVector(rng, kB * 4 * 32, 1.0f);
  const ModelInferRequest batched = MakeInfer("mha_plain", {kB, 4, 32}, values, "FP32", true);
  ModelInferResponse reply;
  grpc::Status status;
  std::thread client([&] { status = CallInfer(*stub, batched, &reply); });
  ASSERT_TRUE(WaitFor([&] { return state->runs.load() == 1; }, std::chrono::seconds(10)));
  bool drained = false;
  std::thread drainer([&] { drained = server->Drain(); });
  EXPECT_TRUE(WaitFor([&] { return !ServerReady(*stub); }, std::chrono::seconds(5)));
  release.Open();
  client.join();
  drainer.join();
  EXPECT_TRUE(drained);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(state->runs.load(), static_cast<int>(kB));
  for (uint32_t b : {0u, 1u, kB / 2, kB - 1}) {
    const v2::V1Pair p =
        v2::SequenceAsV1(values, b, 4, 32, {}, v1::WEIGHTS_NONE, v1::POOLING_NONE, reply);
    EXPECT_TRUE(oracle.Matches("mha_plain", p.request, p.reply)) << "sequence " << b;
  }
}

TEST(E2eV2RpcTest, TokensGuardV2CallsButServerLiveAndReady) {
  const std::string dir = ::testing::TempDir() + "/v2_tokens_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string tokens = dir + "/tokens";
  std::ofstream(tokens) << "alice " << Sha256Hex("token-a") << "\n";
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.security.auth_tokens_path = tokens;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(LoopbackChannel(server->port()));
  inference::ServerLiveResponse live;
  EXPECT_TRUE(Call(*stub, &GRPCInferenceService::Stub::ServerLive, inference::ServerLiveRequest(),
                   &live).ok());
  EXPECT_TRUE(ServerReady(*stub));
  inference::ModelReadyRequest q;
  q.set_name("mha_plain");
  inference::ModelReadyResponse ready;
  EXPECT_EQ(Call(*stub, &GRPCInferenceService::Stub::ModelReady, q, &ready).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Call(*stub, &GRPCInferenceService::Stub::ModelReady, q, &ready, "token-a").ok());
  std::mt19937 rng(10);
  const ModelInferRequest r =
      MakeInfer("mha_plain", {2, 32}, RandomVector(rng, 64, 1.0f), "FP32", true);
  ModelInferResponse reply;
  EXPECT_EQ(Call(*stub, &GRPCInferenceService::Stub::ModelInfer, r, &reply).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Call(*stub, &GRPCInferenceService::Stub::ModelInfer, r, &reply, "wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Call(*stub, &GRPCInferenceService::Stub::ModelInfer, r, &reply, "token-a").ok());
  server.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attnserve::testing
