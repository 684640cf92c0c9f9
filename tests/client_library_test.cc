// The client library on its own: AttentionClient retries UNAVAILABLE and
// nothing else (against a scripted Attention service on 127.0.0.1), the load
// generator makes exactly the calls it is asked for in both loops and counts
// each code, and the .npy / JSON readers accept what they document and name
// the file in every error.
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "client/attention_client.h"
#include "client/load_generator.h"
#include "client/tensor_io.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

// An Attention service that answers each call with the next code of a
// script (OK once the script runs out) and counts the calls it received.
class ScriptedService final : public v1::Attention::CallbackService {
 public:
  explicit ScriptedService(std::vector<grpc::StatusCode> script) : script_(std::move(script)) {}

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const v1::AttendRequest* request,
                                   v1::AttendResponse* response) override {
    grpc::StatusCode code = grpc::StatusCode::OK;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (calls_ < script_.size()) code = script_[calls_];
      ++calls_;
    }
    auto* reactor = context->DefaultReactor();
    if (code != grpc::StatusCode::OK) {
      reactor->Finish(grpc::Status(code, "scripted"));
      return reactor;
    }
    // A well-formed reply: the input echoed as the output, batch of 1.
    *response->mutable_output() = request->input();
    response->mutable_stats()->set_batch_size(1);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  size_t calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  const std::vector<grpc::StatusCode> script_;
  std::mutex mu_;
  size_t calls_ = 0;  // guarded by mu_
};

// A real gRPC server for `service` on 127.0.0.1 and a free port.
struct LoopbackServer {
  explicit LoopbackServer(grpc::Service* service) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server = builder.BuildAndStart();
  }
  ~LoopbackServer() { server->Shutdown(std::chrono::system_clock::now()); }
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }

  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

client::ClientOptions FastRetries(const std::string& target) {
  client::ClientOptions o;
  o.target = target;
  o.deadline_ms = 10000;
  o.max_retries = 2;
  o.retry_backoff_ms = 1;
  return o;
}

TEST(AttentionClientTest, RetriesUnavailableUntilItSucceeds) {
  ScriptedService service({grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::UNAVAILABLE});
  LoopbackServer server(&service);
  auto client = client::AttentionClient::Create(FastRetries(server.target()));
  ASSERT_TRUE(client.ok()) << client.status();
  v1::AttendResponse reply;
  int attempts = 0;
  const grpc::Status s = (*client)->Attend(SmallRequest(), &reply, &attempts);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(service.calls(), 3u);
  EXPECT_EQ(reply.output().data_size(), 6);
}

TEST(AttentionClientTest, GivesUpAfterMaxRetries) {
  ScriptedService service(std::vector<grpc::StatusCode>(10, grpc::StatusCode::UNAVAILABLE));
  LoopbackServer server(&service);
  auto client = client::AttentionClient::Create(FastRetries(server.target()));
  ASSERT_TRUE(client.ok());
  v1::AttendResponse reply;
  int attempts = 0;
  EXPECT_EQ((*client)->Attend(SmallRequest(), &reply, &attempts).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(service.calls(), 3u);
}

TEST(AttentionClientTest, NeverRetriesOtherCodes) {
  for (grpc::StatusCode code :
       {grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::RESOURCE_EXHAUSTED,
        grpc::StatusCode::DEADLINE_EXCEEDED, grpc::StatusCode::INTERNAL}) {
    ScriptedService service({code});
    LoopbackServer server(&service);
    auto client = client::AttentionClient::Create(FastRetries(server.target()));
    ASSERT_TRUE(client.ok());
    v1::AttendResponse reply;
    int attempts = 0;
    EXPECT_EQ((*client)->Attend(SmallRequest(), &reply, &attempts).error_code(), code);
    EXPECT_EQ(attempts, 1);
    EXPECT_EQ(service.calls(), 1u);
  }
}

TEST(AttentionClientTest, RejectsBadOptions) {
  client::ClientOptions o;
  o.deadline_ms = 0;
  EXPECT_THAT(std::string(client::AttentionClient::Create(o).status().message()),
              HasSubstr("deadline_ms must be positive"));
  o = {};
  o.load_balancing = "random";
  EXPECT_THAT(std::string(client::AttentionClient::Create(o).status().message()),
              HasSubstr("pick_first or round_robin"));
  o = {};
  o.tls = true;
  o.tls_root_certs_path = "/nonexistent/ca.pem";
  EXPECT_THAT(std::string(client::AttentionClient::Create(o).status().message()),
              HasSubstr("/nonexistent/ca.pem"));
}

TEST(LoadGeneratorTest, ClosedAndOpenLoopsMakeExactlyTheCallsAskedFor) {
  // Every fifth call fails: the report counts each code.
  std::vector<grpc::StatusCode> script(100, grpc::StatusCode::OK);
  for (size_t i = 4; i < script.size(); i += 5) script[i] = grpc::StatusCode::RESOURCE_EXHAUSTED;
  ScriptedService service(script);
  LoopbackServer server(&service);
  client::ClientOptions client;
  client.target = server.target();
  const std::vector<client::LoadRequest> mix = {client::MakeLoadRequest(SmallRequest(), 3)};

  client::LoadOptions closed;
  closed.concurrency = 4;
  closed.connections = 2;
  closed.total = 50;
  auto report = client::RunLoad(client, closed, mix);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->calls, 50u);
  EXPECT_EQ(report->ok, 40u);
  EXPECT_EQ(report->codes.at("RESOURCE_EXHAUSTED"), 10u);
  EXPECT_EQ(report->ok_tokens, 80u);
  EXPECT_DOUBLE_EQ(report->mean_batch_size, 1.0);
  EXPECT_EQ(service.calls(), 50u);

  client::LoadOptions open;
  open.rps = 500;
  open.total = 30;
  open.concurrency = 64;
  report = client::RunLoad(client, open, mix);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->calls + report->skipped, 30u);
  EXPECT_EQ(service.calls(), 50u + report->calls);
  EXPECT_LE(report->p50_ms, report->p99_ms);
  EXPECT_LE(report->p99_ms, report->max_ms);
}

TEST(LoadGeneratorTest, RepliesWithoutTheExpectedOutputAreNotOk) {
  ScriptedService service({});
  LoopbackServer server(&service);
  client::ClientOptions client;
  client.target = server.target();
  // The service echoes 2 x 3 values; a mix that expects d_model 4 flags them.
  client::LoadOptions load;
  load.total = 5;
  auto report = client::RunLoad(client, load, {client::MakeLoadRequest(SmallRequest(), 4)});
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->ok, 0u);
  EXPECT_EQ(report->malformed, 5u);
  EXPECT_EQ(report->codes.at("MALFORMED_REPLY"), 5u);
}

TEST(LoadGeneratorTest, RefusesAnUnboundedRun) {
  client::LoadOptions load;  // neither total nor duration
  auto report = client::RunLoad({}, load, {client::MakeLoadRequest(SmallRequest(), 3)});
  EXPECT_THAT(std::string(report.status().message()), HasSubstr("stop by itself"));
}

class TensorIoTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = ::testing::TempDir() + "tensor_io_" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  static std::string Npy(const std::string& dict, const std::string& data) {
    std::string header = dict;
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    return std::string("\x93NUMPY\x01\x00", 8) + char(header.size()) + char(0) + header + data;
  }
};

TEST_F(TensorIoTest, NpyRoundTripsAndBadFilesNameTheProblem) {
  client::NpyArray a{{2, 3}, {1, 2, 3, 4, 5, 6}};
  const std::string path = ::testing::TempDir() + "tensor_io_a.npy";
  ASSERT_TRUE(client::WriteNpy(path, a).ok());
  auto back = client::ReadNpy(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, a.shape);
  EXPECT_EQ(back->data, a.data);

  const std::string eight(8, '\0');
  struct Case {
    std::string bytes, needle;
  };
  const std::vector<Case> cases = {
      {"not numpy at all", "magic"},
      {Npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", eight), "float32"},
      {Npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight), "Fortran"},
      {Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", eight), "needs 12"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string file = Write("bad" + std::to_string(i) + ".npy", cases[i].bytes);
    auto r = client::ReadNpy(file);
    ASSERT_FALSE(r.ok()) << cases[i].needle;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(cases[i].needle));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(file));
  }
}

TEST_F(TensorIoTest, JsonTakesARequestAnArrayOrAMatrix) {
  auto one = client::ReadRequestsJson(
      Write("one.json", R"({"model": "m", "input": {"rows": 1, "cols": 2, "data": [1, 2]},
                           "mask": {"causal": true}, "weights": "WEIGHTS_MEAN"})"));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].model(), "m");
  EXPECT_TRUE((*one)[0].mask().causal());
  EXPECT_EQ((*one)[0].weights(), v1::WEIGHTS_MEAN);

  auto many = client::ReadRequestsJson(Write("many.json", R"([{"model": "a"}, {"model": "b"}])"));
  ASSERT_TRUE(many.ok()) << many.status();
  ASSERT_EQ(many->size(), 2u);
  EXPECT_EQ((*many)[1].model(), "b");

  auto matrix = client::ReadRequestsJson(Write("matrix.json", "[[1, 2, 3], [4, 5, 6]]"));
  ASSERT_TRUE(matrix.ok()) << matrix.status();
  EXPECT_EQ((*matrix)[0].input().rows(), 2u);
  EXPECT_EQ((*matrix)[0].input().cols(), 3u);
  EXPECT_THAT((*matrix)[0].input().data(), ::testing::ElementsAre(1, 2, 3, 4, 5, 6));

  for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
           {"[[1, 2], [3]]", "row 1"},
           {"{\"inputs\": 1}", "not an AttendRequest"},
           {"{", "not valid JSON"},
           {"42", "expected an AttendRequest"}}) {
    auto r = client::ReadRequestsJson(Write("bad.json", text));
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(needle)) << text;
  }
}

}  // namespace
}  // namespace attnserve::testing
