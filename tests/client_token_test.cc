// The client library's security options on their own: tokens made by
// client/token.h (format, randomness, the SHA-256 line of the server's token
// file, checked against coreutils' sha256sum), and the bearer token that
// AttentionClient and the load generator put on every call (seen by a real
// gRPC server on 127.0.0.1 that records the metadata it receives). Option
// errors name what is wrong and never the token itself.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/load_generator.h"
#include "client/token.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// sha256sum's digest of `text`, an oracle independent of OpenSSL's SHA256.
std::string CoreutilsSha256(const std::string& text) {
  const std::string path = ::testing::TempDir() + "client_token_sha_input";
  std::ofstream(path, std::ios::binary) << text;
  FILE* pipe = popen(("sha256sum " + path).c_str(), "r");
  char buffer[128] = {};
  const size_t n = pipe != nullptr ? fread(buffer, 1, sizeof buffer - 1, pipe) : 0;
  if (pipe != nullptr) pclose(pipe);
  std::filesystem::remove(path);
  return std::string(buffer, n).substr(0, 64);
}

TEST(TokenTest, TokensAreRandomPrefixedBase64UrlOf32Bytes) {
  const std::regex shape("attn_[A-Za-z0-9_-]{43}");
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<std::string> token = client::GenerateToken();
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_TRUE(std::regex_match(*token, shape)) << *token;
    seen.insert(*token);
  }
  EXPECT_EQ(seen.size(), 200u);
}

TEST(TokenTest, FileLineHoldsThePrincipalAndTheSha256OfTheToken) {
  // FIPS 180-2's test vector, then tokens against sha256sum.
  EXPECT_EQ(client::TokenSha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  for (int i = 0; i < 3; ++i) {
    const std::string token = client::GenerateToken().value();
    const std::string line = client::TokenFileLine("alice", token);
    EXPECT_EQ(line, "alice " + CoreutilsSha256(token));
    EXPECT_THAT(line, Not(HasSubstr(token)));
  }
}

TEST(TokenTest, PrincipalsAreOneVisibleAsciiWord) {
  for (const std::string& ok : std::vector<std::string>{"a", "alice",
                                                      "spiffe://attnserve.test/client-a",
                                                      "CN=x,O=y"}) {
    EXPECT_TRUE(client::ValidatePrincipal(ok).ok()) << ok;
  }
  for (const std::string& bad : std::vector<std::string>{"", "two words", "tab\there", "#comment",
                                                       "caf\xc3\xa9", std::string(257, 'x')}) {
    EXPECT_EQ(client::ValidatePrincipal(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(TokenTest, AppendTokenLineCreatesAPrivateFileAndAppends) {
  const std::string path = ::testing::TempDir() + "client_token_file";
  std::filesystem::remove(path);
  const std::string t1 = client::GenerateToken().value(), t2 = client::GenerateToken().value();
  ASSERT_TRUE(client::AppendTokenLine(path, "a", t1).ok());
  ASSERT_TRUE(client::AppendTokenLine(path, "b", t2).ok());
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, absl::StrCat("a ", client::TokenSha256Hex(t1), "\nb ",
                               client::TokenSha256Hex(t2), "\n"));
  std::filesystem::remove(path);
  const absl::Status s = client::AppendTokenLine("/nonexistent/dir/tokens", "a", t1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("/nonexistent/dir/tokens"));
}

TEST(ClientSecurityOptionsTest, BadOptionsAreRefusedWithoutEchoingTheToken) {
  struct Case {
    client::ClientOptions options;
    std::string needle;
  };
  std::vector<Case> cases(5);
  cases[0].options.tls_root_certs_path = "ca.pem";  // without tls: never silent plaintext
  cases[0].needle = "tls is off";
  cases[1].options.tls_server_name = "localhost";
  cases[1].needle = "tls is off";
  cases[2].options.tls = true;
  cases[2].options.tls_client_cert_path = "client.pem";  // no key
  cases[2].needle = "private key";
  cases[3].options.token = "attn_secret part";  // a space
  cases[3].needle = "position 12 of 16";
  cases[4].options.token = "attn_secret\n";
  cases[4].needle = "position 12 of 12";
  for (const Case& c : cases) {
    for (bool make_channel : {false, true}) {
      const absl::Status s = make_channel ? client::MakeChannel(c.options).status()
                                          : client::AttentionClient::Create(c.options).status();
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.needle;
      EXPECT_THAT(std::string(s.message()), HasSubstr(c.needle));
      EXPECT_THAT(std::string(s.message()), Not(HasSubstr("secret")));
    }
  }
}

// An Attention service that records the `authorization` metadata of every
// call and answers with the input echoed as the output.
class RecordingService final : public v1::Attention::CallbackService {
 public:
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const v1::AttendRequest* request,
                                   v1::AttendResponse* response) override {
    std::vector<std::string> values;
    const auto range = context->client_metadata().equal_range("authorization");
    for (auto it = range.first; it != range.second; ++it) {
      values.emplace_back(it->second.data(), it->second.size());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.push_back(values);
    }
    *response->mutable_output() = request->input();
    response->mutable_stats()->set_batch_size(1);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // The authorization values of each call so far.
  std::vector<std::vector<std::string>> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<std::string>> calls_;  // guarded by mu_
};

struct RecordingServer {
  RecordingServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~RecordingServer() { server->Shutdown(std::chrono::system_clock::now()); }
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }

  RecordingService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

TEST(ClientTokenTest, EveryCallCarriesTheBearerTokenAndNoneWithoutOne) {
  RecordingServer server;
  client::ClientOptions options;
  options.target = server.target();
  options.token = client::GenerateToken().value();
  const std::string expected = "Bearer " + options.token;

  auto with_token = client::AttentionClient::Create(options);
  ASSERT_TRUE(with_token.ok()) << with_token.status();
  v1::AttendResponse reply;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*with_token)->Attend(SmallRequest(), &reply).ok());

  // The load generator, over several connections, in both loops.
  const std::vector<client::LoadRequest> mix = {client::MakeLoadRequest(SmallRequest(), 3)};
  client::LoadOptions closed;
  closed.total = 20;
  closed.concurrency = 4;
  closed.connections = 2;
  auto report = client::RunLoad(options, closed, mix);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->ok, 20u);
  client::LoadOptions open;
  open.total = 10;
  open.rps = 1000;
  report = client::RunLoad(options, open, mix);
  ASSERT_TRUE(report.ok()) << report.status();
  const size_t token_calls = 3 + 20 + report->calls;

  options.token.clear();
  auto without = client::AttentionClient::Create(options);
  ASSERT_TRUE(without.ok());
  ASSERT_TRUE((*without)->Attend(SmallRequest(), &reply).ok());

  const auto calls = server.service.calls();
  ASSERT_EQ(calls.size(), token_calls + 1);
  for (size_t i = 0; i < token_calls; ++i) {
    EXPECT_EQ(calls[i], std::vector<std::string>{expected}) << "call " << i;
  }
  EXPECT_TRUE(calls.back().empty());
}

}  // namespace
}  // namespace attnserve::testing
