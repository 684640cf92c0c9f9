// End-to-end tests of the Attention service over 127.0.0.1 against an
// in-process AttnServer on tests/golden/data: concurrent mixed traffic equals
// the reference engine and is batched; every row of DESIGN.md's error table
// (but draining, see e2e_drain_test.cc) returns its code with a clear
// message; ListModels; server reflection.
#include <cmath>
#include <latch>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "core/model_config.h"
#include "tests/e2e_util.h"
#include "tests/test_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

// Long enough that requests sent together certainly share a batch, short
// enough to keep the test fast.
constexpr int64_t kBatchingDelayUs = 20000;
// Long enough that a request certainly still waits while the test acts.
constexpr int64_t kHoldDelayUs = 1000000;

struct Call {
  v1::AttendRequest request;
  std::string model;  // the model expected to serve it
  grpc::Status status;
  v1::AttendResponse reply;
};

Call MixedCall(std::mt19937& rng, int variant, const std::string& asked_model,
               const std::string& model, uint32_t d_model, uint32_t max_length) {
  return Call{RandomMixedRequest(rng, variant, asked_model, d_model, max_length), model, {}, {}};
}

TEST(E2eServiceTest, ConcurrentMixedRequestsEqualTheReferenceAndAreBatched) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.default_model = "mha_plain";
  options.batching.max_queue_delay_us = kBatchingDelayUs;
  options.batching.max_batch_size = 16;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());

  constexpr int kClients = 64;
  constexpr int kCallsPerClient = 3;
  std::mt19937 rng(20240611);
  std::vector<std::vector<Call>> calls(kClients);
  for (int c = 0; c < kClients; ++c) {
    for (int k = 0; k < kCallsPerClient; ++k) {
      const int variant = c * kCallsPerClient + k;
      Call call = c % 4 == 3 ? MixedCall(rng, variant, "mha_sinusoidal_sep", "mha_sinusoidal_sep", 64, 64)
                  : c % 4 == 0 ? MixedCall(rng, variant, "", "mha_plain", 32, 64)  // the default
                               : MixedCall(rng, variant, "mha_plain", "mha_plain", 32, 64);
      if (c % 5 != 0) call.request.set_request_id(absl::StrCat("c", c, "-", k));
      calls[c].push_back(std::move(call));
    }
  }

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) channels.push_back(LoopbackChannel(server->port(), i));
  std::latch start(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::Attention::NewStub(channels[c % channels.size()]);
      start.arrive_and_wait();  // all at once, so batches form
      for (Call& call : calls[c]) call.status = CallAttend(*stub, call.request, &call.reply);
    });
  }
  for (std::thread& t : clients) t.join();

  std::set<std::string> ids;
  int batched = 0;
  for (const std::vector<Call>& client_calls : calls) {
    for (const Call& call : client_calls) {
      const v1::AttendResponse& reply = call.reply;
      ASSERT_TRUE(call.status.ok()) << call.status.error_code() << " " << call.status.error_message();
      if (call.request.request_id().empty()) {
        EXPECT_FALSE(reply.request_id().empty());
      } else {
        EXPECT_EQ(reply.request_id(), call.request.request_id());
      }
      EXPECT_TRUE(ids.insert(reply.request_id()).second) << "duplicate id " << reply.request_id();
      EXPECT_EQ(reply.model(), call.model);
      EXPECT_TRUE(oracle.Matches(call.model, call.request, reply));
      EXPECT_GE(reply.stats().batch_size(), 1u);
      EXPECT_GE(reply.stats().batch_tokens(), call.request.input().rows());
      EXPECT_GT(reply.stats().compute_us(), 0u);
      if (reply.stats().batch_size() > 1) ++batched;
    }
  }
  EXPECT_GT(batched, 0) << "no reply came from a batch of more than one request";
  // The oracle is not vacuous: a slightly wrong reply fails it.
  Call& probe = calls[1][0];
  probe.reply.mutable_output()->set_data(0, probe.reply.output().data(0) + 0.01f);
  EXPECT_FALSE(oracle.Matches(probe.model, probe.request, probe.reply));
}

// One row of the error table: how to spoil a good request, the code, and
// what the message must mention.
struct ErrorCase {
  std::string name;
  std::function<void(v1::AttendRequest*)> spoil;
  grpc::StatusCode code;
  std::vector<std::string> message_parts;
};

std::vector<ErrorCase> ErrorCases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {"cols != d_model",
       [](v1::AttendRequest* r) {
         r->mutable_input()->set_cols(31);
         r->mutable_input()->mutable_data()->Truncate(r->input().rows() * 31);
       },
       grpc::StatusCode::INVALID_ARGUMENT, {"31", "d_model", "32"}},
      {"data size != rows*cols",
       [](v1::AttendRequest* r) { r->mutable_input()->mutable_data()->RemoveLast(); },
       grpc::StatusCode::INVALID_ARGUMENT, {"127", "4 * 32 = 128"}},
      {"empty input",
       [](v1::AttendRequest* r) {
         r->mutable_input()->set_rows(0);
         r->mutable_input()->clear_data();
       },
       grpc::StatusCode::INVALID_ARGUMENT, {"empty"}},
      {"NaN value", [nan](v1::AttendRequest* r) { r->mutable_input()->set_data(37, nan); },
       grpc::StatusCode::INVALID_ARGUMENT, {"row 1", "column 5", "finite"}},
      {"Inf value", [inf](v1::AttendRequest* r) { r->mutable_input()->set_data(0, -inf); },
       grpc::StatusCode::INVALID_ARGUMENT, {"row 0", "finite"}},
      {"odd edges count",
       [](v1::AttendRequest* r) {
         for (uint32_t e : {0u, 1u, 2u}) r->mutable_mask()->add_edges(e);
       },
       grpc::StatusCode::INVALID_ARGUMENT, {"edges", "3", "even"}},
      {"edge index out of range",
       [](v1::AttendRequest* r) {
         for (uint32_t e : {0u, 1u, 2u, 4u}) r->mutable_mask()->add_edges(e);
       },
       grpc::StatusCode::INVALID_ARGUMENT, {"edges", "4", "sequence length 4"}},
      {"unknown model", [](v1::AttendRequest* r) { r->set_model("no_such_model"); },
       grpc::StatusCode::NOT_FOUND, {"no_such_model", "mha_plain"}},
  };
}

class E2eErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Attention::NewStub(LoopbackChannel(server_->port()));
  }

  // A valid 4 x 32 request for mha_plain.
  v1::AttendRequest Good(uint32_t seed = 1) {
    std::mt19937 rng(seed);
    v1::AttendRequest r = RandomRequest(rng, "mha_plain", 32, 4);
    r.set_request_id(absl::StrCat("good-", seed));
    return r;
  }

  std::unique_ptr<server::AttnServer> server_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

TEST_F(E2eErrorTest, EveryValidationRowReturnsItsCodeAndSaysWhatWasWrong) {
  for (const ErrorCase& c : ErrorCases()) {
    SCOPED_TRACE(c.name);
    v1::AttendRequest request = Good();
    c.spoil(&request);
    v1::AttendResponse reply;
    const grpc::Status status = CallAttend(*stub_, request, &reply);
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    for (const std::string& part : c.message_parts) {
      EXPECT_THAT(status.error_message(), HasSubstr(part));
    }
  }
}

TEST_F(E2eErrorTest, LongerThanMaxLengthIsOutOfRange) {
  std::mt19937 rng(3);
  v1::AttendResponse reply;
  const grpc::Status status =
      CallAttend(*stub_, RandomRequest(rng, "mha_sinusoidal_sep", 64, 65), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("65"));
  EXPECT_THAT(status.error_message(), HasSubstr("max_length 64"));
  // Exactly max_length is fine.
  EXPECT_TRUE(CallAttend(*stub_, RandomRequest(rng, "mha_sinusoidal_sep", 64, 64), &reply).ok());
}

TEST(E2eBadRequestTest, BadRequestsNeverDisturbTheGoodOnesOfTheirBatch) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_delay_us = kBatchingDelayUs;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  const ReferenceOracle oracle(GoldenRepository());
  const std::vector<ErrorCase> cases = ErrorCases();
  constexpr int kClients = 32;  // even: good, odd: bad
  std::mt19937 rng(77);
  std::vector<Call> calls;
  for (int c = 0; c < kClients; ++c) {
    Call call = MixedCall(rng, c / 2, "mha_plain", "mha_plain", 32, 48);
    if (c % 2 == 1) {
      call.request = RandomRequest(rng, "mha_plain", 32, 4);
      cases[(c / 2) % cases.size()].spoil(&call.request);
    }
    call.request.set_request_id(absl::StrCat("r", c));
    calls.push_back(std::move(call));
  }
  auto channel = LoopbackChannel(server->port());
  std::latch start(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::Attention::NewStub(channel);
      start.arrive_and_wait();
      calls[c].status = CallAttend(*stub, calls[c].request, &calls[c].reply);
    });
  }
  for (std::thread& t : clients) t.join();
  int batched = 0;
  for (int c = 0; c < kClients; ++c) {
    SCOPED_TRACE(calls[c].request.request_id());
    if (c % 2 == 1) {
      EXPECT_EQ(calls[c].status.error_code(), cases[(c / 2) % cases.size()].code);
      continue;
    }
    ASSERT_TRUE(calls[c].status.ok()) << calls[c].status.error_message();
    EXPECT_TRUE(oracle.Matches("mha_plain", calls[c].request, calls[c].reply));
    EXPECT_LE(calls[c].reply.stats().batch_size(), kClients / 2) << "a bad request was batched";
    if (calls[c].reply.stats().batch_size() > 1) ++batched;
  }
  EXPECT_GT(batched, 0);
}

TEST(E2eQueueTest, FullQueueIsResourceExhausted) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_size = 1;
  options.batching.max_batch_size = 64;
  options.batching.max_queue_delay_us = kHoldDelayUs;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(5);
  const v1::AttendRequest first = RandomRequest(rng, "mha_plain", 32, 8);
  v1::AttendResponse first_reply;
  grpc::Status first_status;
  std::thread waiter([&] { first_status = CallAttend(*stub, first, &first_reply); });
  const server::Batcher& batcher = *server->registry().Find("mha_plain")->batcher;
  ASSERT_TRUE(WaitFor([&] { return batcher.queue_depth() == 1; }, std::chrono::seconds(5)));

  v1::AttendResponse reply;
  const grpc::Status status = CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, 8), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("queue full"));
  waiter.join();
  EXPECT_TRUE(first_status.ok()) << first_status.error_message();
  EXPECT_TRUE(ReferenceOracle(GoldenRepository()).Matches("mha_plain", first, first_reply));
}

TEST(E2eQueueTest, DeadlinePassedWhileQueuedIsDeadlineExceededAndNeverComputed) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_batch_size = 64;
  options.batching.max_queue_delay_us = kHoldDelayUs;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(6);
  const v1::AttendRequest hurried = RandomRequest(rng, "mha_plain", 32, 5);
  const v1::AttendRequest patient = RandomRequest(rng, "mha_plain", 32, 7);
  grpc::Status hurried_status, patient_status;
  v1::AttendResponse hurried_reply, patient_reply;
  std::thread a([&] { hurried_status = CallAttend(*stub, hurried, &hurried_reply, 200); });
  const server::Batcher& batcher = *server->registry().Find("mha_plain")->batcher;
  ASSERT_TRUE(WaitFor([&] { return batcher.queue_depth() == 1; }, std::chrono::seconds(5)));
  std::thread b([&] { patient_status = CallAttend(*stub, patient, &patient_reply, 20000); });
  a.join();
  b.join();
  EXPECT_EQ(hurried_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(patient_status.ok()) << patient_status.error_message();
  // Both waited in the same queue; the expired one was dropped, not computed.
  EXPECT_EQ(patient_reply.stats().batch_size(), 1u);
  EXPECT_EQ(patient_reply.stats().batch_tokens(), 7u);
  EXPECT_TRUE(WaitFor(
      [&] {
        return CounterValue(server->metrics(), "attnserve_requests_total",
                            {{"model", "mha_plain"}, {"code", "DEADLINE_EXCEEDED"}}) == 1;
      },
      std::chrono::seconds(5)));
  // Both waits are in the queue-time histogram, the expired one too (the
  // longest waits are the ones that matter).
  uint64_t queue_samples = 0;
  for (const prometheus::MetricFamily& f : server->metrics().registry()->Collect()) {
    if (f.name != "attnserve_queue_duration_seconds") continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      for (const auto& label : m.label) {
        if (label.name == "model" && label.value == "mha_plain") {
          queue_samples = m.histogram.sample_count;
        }
      }
    }
  }
  EXPECT_EQ(queue_samples, 2u);
}

TEST(E2eMessageSizeTest, OversizeReplyAndOversizeRequestAreResourceExhausted) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.max_message_bytes = 64 * 1024;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(8);
  // 8 KiB in; PER_HEAD out would be 4 heads x 64 x 64 floats = 64 KiB + the output.
  v1::AttendRequest request = RandomRequest(rng, "mha_plain", 32, 64);
  request.set_weights(v1::WEIGHTS_PER_HEAD);
  v1::AttendResponse reply;
  grpc::Status status = CallAttend(*stub, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("65536"));
  // The same request asking for the mean weights fits.
  request.set_weights(v1::WEIGHTS_MEAN);
  status = CallAttend(*stub, request, &reply);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(ReferenceOracle(GoldenRepository()).Matches("mha_plain", request, reply));
  // A request of 600 x 32 floats (75 KiB) is over the limit itself.
  status = CallAttend(*stub, RandomRequest(rng, "mha_plain", 32, 600), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST(E2eServiceTest, ListModelsListsEveryModelWithItsConfig) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(10000));
  v1::ListModelsResponse response;
  const grpc::Status status = stub->ListModels(&context, v1::ListModelsRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const ReferenceOracle oracle(GoldenRepository());
  std::vector<std::string> names;
  std::vector<std::string> defaults;
  for (const v1::ModelInfo& info : response.models()) {
    SCOPED_TRACE(info.name());
    names.push_back(info.name());
    if (info.is_default()) defaults.push_back(info.name());
    const core::ModelConfig& c = oracle.config(info.name());
    EXPECT_EQ(info.d_model(), c.d_model);
    EXPECT_EQ(info.num_heads(), c.num_heads);
    EXPECT_EQ(info.max_length(), c.max_length);
    EXPECT_EQ(info.positional(), core::ToString(c.positional));
    EXPECT_EQ(info.relevance(), "dot");
    EXPECT_EQ(info.normalization(), "softmax");
    EXPECT_TRUE(info.projections());
    EXPECT_EQ(info.precision(), core::ToString(c.precision));
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("mha_learned_bf16", "mha_plain",
                                                     "mha_sinusoidal_sep", "rotary_manual"));
  // The first by name when --default-model is not given.
  EXPECT_THAT(defaults, ::testing::ElementsAre("mha_learned_bf16"));
  const v1::ModelInfo* sinusoidal = nullptr;
  for (const v1::ModelInfo& info : response.models()) {
    if (info.name() == "mha_sinusoidal_sep") sinusoidal = &info;
  }
  ASSERT_NE(sinusoidal, nullptr);
  EXPECT_EQ(sinusoidal->d_model(), 64u);
  EXPECT_EQ(sinusoidal->num_heads(), 8u);
  EXPECT_EQ(sinusoidal->max_length(), 64u);
  EXPECT_EQ(sinusoidal->positional(), "sinusoidal");
}

TEST(E2eServiceTest, ReflectionListsTheAttentionService) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  std::vector<std::string> services;
  const grpc::Status status = ReflectionListServices(LoopbackChannel(server->port()), &services);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_THAT(services, ::testing::Contains("attnserve.v1.Attention"));
  EXPECT_THAT(services, ::testing::Contains("grpc.health.v1.Health"));
}

}  // namespace
}  // namespace attnserve::testing
