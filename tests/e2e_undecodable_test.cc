// End-to-end tests of bytes that are not an AttendRequest, sent raw with a
// grpc::GenericStub to an in-process AttnServer over 127.0.0.1: Attend and
// AttendStream answer INVALID_ARGUMENT saying the request could not be
// parsed (never UNIMPLEMENTED), counted under model "_unknown"; unknown field
// numbers are fine; server reflection still describes the service.
#include <future>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kParseError[] = "could not be parsed as attnserve.v1.AttendRequest";

// A unary call of `method` with raw request bytes; *reply receives the raw reply.
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request, std::string* reply = nullptr) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(20000));
  const grpc::ByteBuffer buffer = ToByteBuffer(request);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &buffer, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();  // bounded by the deadline
  if (reply != nullptr) *reply = FromByteBuffer(response);
  return status;
}

struct RawStreamResult {
  grpc::Status status;
  std::vector<std::string> replies;
};

// An AttendStream writing `messages` raw, one after another, then half-closing
// and reading every reply. Each operation completes by the deadline.
RawStreamResult RawStream(const std::shared_ptr<grpc::Channel>& channel,
                          const std::vector<std::string>& messages) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(20000));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context, "/attnserve.v1.Attention/AttendStream", &cq);
  auto next = [&cq] {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok;
  };
  RawStreamResult result;
  call->StartCall(nullptr);
  bool open = next();
  for (const std::string& m : messages) {
    if (!open) break;
    call->Write(ToByteBuffer(m), nullptr);
    open = next();  // false once the server has ended the stream
  }
  call->WritesDone(nullptr);
  next();
  for (;;) {
    grpc::ByteBuffer reply;
    call->Read(&reply, nullptr);
    if (!next()) break;
    result.replies.push_back(FromByteBuffer(reply));
  }
  call->Finish(&result.status, nullptr);
  next();
  cq.Shutdown();
  while (next()) {
  }
  return result;
}

class E2eUndecodableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
    ASSERT_NE(server_, nullptr);
    channel_ = LoopbackChannel(server_->port());
  }

  // A valid request for mha_plain, serialized.
  std::string ValidRequest(const std::string& id, uint32_t length = 5) {
    v1::AttendRequest request = RandomRequest(rng_, "mha_plain", 32, length);
    request.set_request_id(id);
    requests_[id] = request;
    return request.SerializeAsString();
  }

  double UnknownInvalid() {
    return CounterValue(server_->metrics(), "attnserve_requests_total",
                        {{"model", "_unknown"}, {"code", "INVALID_ARGUMENT"}});
  }

  std::mt19937 rng_{77};
  std::map<std::string, v1::AttendRequest> requests_;
  std::unique_ptr<server::AttnServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(E2eUndecodableTest, UnparsableBytesAreInvalidArgumentWithAClearMessageAndCounted) {
  const std::string valid = ValidRequest("v");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"garbage", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"},
      {"truncated", valid.substr(0, valid.size() / 2)},
      {"invalid wire type 7", std::string("\x0f\x01", 2)},
      {"unmatched end-group", std::string("\x0c", 1)},
  };
  const std::string method = "/attnserve.v1.Attention/Attend";
  for (const auto& [name, bytes] : cases) {
    const grpc::Status status = RawUnary(channel_, method, bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << name << ": " << status.error_code() << " " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(kParseError)) << name;
    EXPECT_THAT(status.error_message(), HasSubstr(absl::StrCat("(", bytes.size(), " bytes)")))
        << name;
  }
  EXPECT_EQ(UnknownInvalid(), static_cast<double>(cases.size()));
}

TEST_F(E2eUndecodableTest, KnownFieldWithAnotherWireTypeIsSkippedThenValidated) {
  // model = "mha_plain", then input (field 3, a message) sent as a varint:
  // protobuf keeps it as an unknown field, so the request has no input and
  // validation says so.
  const std::string bytes = std::string("\x0a\x09mha_plain", 11) + std::string("\x18\x05", 2);
  const grpc::Status status = RawUnary(channel_, "/attnserve.v1.Attention/Attend", bytes);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("input.cols is 0; model 'mha_plain'"));
  EXPECT_EQ(UnknownInvalid(), 0);
}

TEST_F(E2eUndecodableTest, UnknownFieldNumbersAreFine) {
  const ReferenceOracle oracle(GoldenRepository());
  // Field 99 as a varint, field 100 as bytes, field 2000 as fixed32.
  const std::string extra = std::string("\x98\x06\x2a", 3) + std::string("\xa2\x06\x03xyz", 6) +
                            std::string("\x85\x7d\x01\x02\x03\x04", 6);
  std::string reply_bytes;
  const grpc::Status status = RawUnary(channel_, "/attnserve.v1.Attention/Attend",
                                       ValidRequest("u", 9) + extra, &reply_bytes);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  v1::AttendResponse reply;
  ASSERT_TRUE(reply.ParseFromString(reply_bytes));
  EXPECT_EQ(reply.request_id(), "u");
  EXPECT_TRUE(oracle.Matches("mha_plain", requests_["u"], reply));
}

TEST_F(E2eUndecodableTest, StreamAnswersEarlierMessagesThenEndsWithInvalidArgument) {
  const ReferenceOracle oracle(GoldenRepository());
  std::vector<std::string> messages;
  for (int i = 0; i < 3; ++i) messages.push_back(ValidRequest(absl::StrCat("s", i), 4 + i));
  messages.push_back(std::string("\xff\xff\xff", 3));  // message 4
  for (int i = 3; i < 5; ++i) messages.push_back(ValidRequest(absl::StrCat("s", i), 4 + i));

  const RawStreamResult result = RawStream(channel_, messages);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << result.status.error_message();
  EXPECT_THAT(result.status.error_message(), HasSubstr("message 4"));
  EXPECT_THAT(result.status.error_message(), HasSubstr(kParseError));
  std::set<std::string> answered;
  for (const std::string& bytes : result.replies) {
    v1::AttendResponse reply;
    ASSERT_TRUE(reply.ParseFromString(bytes));
    EXPECT_TRUE(answered.insert(reply.request_id()).second) << "twice: " << reply.request_id();
    EXPECT_TRUE(oracle.Matches("mha_plain", requests_[reply.request_id()], reply));
  }
  // Exactly the messages before the undecodable one: nothing after it is read.
  EXPECT_EQ(answered, (std::set<std::string>{"s0", "s1", "s2"}));
  EXPECT_EQ(UnknownInvalid(), 1);
}

// ServerReflection with one file_containing_symbol request: the file that
// defines attnserve.v1.Attention still describes Attend and AttendStream with
// their message types (the service's handlers take raw bytes now).
TEST_F(E2eUndecodableTest, ReflectionStillDescribesTheAttentionService) {
  // ServerReflectionRequest { string file_containing_symbol = 4; }
  const std::string symbol = "attnserve.v1.Attention";
  const std::string request =
      std::string(1, '\x22') + std::string(1, static_cast<char>(symbol.size())) + symbol;
  std::string reply;
  const grpc::Status status = ReflectionExchange(channel_, request, &reply, 10000);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // ServerReflectionResponse { FileDescriptorResponse file_descriptor_response = 4; }
  // FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
  google::protobuf::UnknownFieldSet top;
  ASSERT_TRUE(top.ParseFromString(reply));
  bool found = false;
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 4) continue;
    google::protobuf::UnknownFieldSet files;
    ASSERT_TRUE(files.ParseFromString(top.field(i).length_delimited()));
    for (int j = 0; j < files.field_count(); ++j) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(files.field(j).length_delimited()));
      for (const auto& service : file.service()) {
        if (service.name() != "Attention") continue;
        found = true;
        std::map<std::string, std::string> inputs;
        for (const auto& method : service.method()) inputs[method.name()] = method.input_type();
        EXPECT_EQ(inputs["Attend"], ".attnserve.v1.AttendRequest");
        EXPECT_EQ(inputs["AttendStream"], ".attnserve.v1.AttendRequest");
        EXPECT_EQ(inputs["ListModels"], ".attnserve.v1.ListModelsRequest");
      }
    }
  }
  EXPECT_TRUE(found) << "no Attention service in the reflection reply";
}

}  // namespace
}  // namespace attnserve::testing
