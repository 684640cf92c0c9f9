// attnctl and AttentionClient against the real attnserve binary with TLS,
// mTLS and bearer tokens, over 127.0.0.1. Certificates are made at test time
// by tests/make_test_certs.sh (Debian's openssl): a CA, a server certificate
// for 127.0.0.1 and localhost, client certificates, an expired one and
// another CA's. Replies are checked against the reference engine; refusals
// by attnctl's exit code (1) and the status code it prints; the token is
// looked for, and must not be found, in attnctl's and the server's output.
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/attention_client.h"
#include "client/token.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"
#include "tests/test_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
constexpr char kModel[] = "mha_plain";  // fp32: the reference agrees to 1e-5

// The attnserve binary on 127.0.0.1 and a free port, with `flags` added;
// SIGKILLed by the destructor if still running.
struct ServerBinary {
  std::unique_ptr<ChildProcess> child;
  int port = 0;
  std::string target() const { return LoopbackTarget(port); }
};

ServerBinary StartServer(const std::vector<std::string>& flags) {
  std::vector<std::string> args = {ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                   "--metrics-port", "0", "--model-repository",
                                   GoldenRepository(), "--default-model", kModel,
                                   "--log-level", "debug"};
  args.insert(args.end(), flags.begin(), flags.end());
  ServerBinary server;
  auto child = ChildProcess::Start(args);
  if (!child.ok()) {
    ADD_FAILURE() << child.status();
    return server;
  }
  server.child = *std::move(child);
  server.port = WaitForServingPort(*server.child, std::chrono::seconds(60));
  if (server.port == 0) ADD_FAILURE() << "no startup line; output:\n" << server.child->output();
  return server;
}

// SIGTERM, then the exit status: a drain under TLS still exits 0.
void StopServer(ServerBinary& server) {
  if (server.child == nullptr) return;
  server.child->Signal(SIGTERM);
  const std::optional<int> status = server.child->WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value()) << "no exit 30 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server.child->output();
}

class ClientTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new std::string(::testing::TempDir() + "client_tls_certs_" +
                             std::to_string(getpid()));
    const RunResult made = RunToExit({"/bin/sh", SourcePath("tests/make_test_certs.sh"), *certs_},
                                     {}, std::chrono::seconds(120));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    oracle_ = new ReferenceOracle(GoldenRepository());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*certs_);
    delete certs_;
    delete oracle_;
  }
  static std::string Cert(const std::string& name) { return *certs_ + "/" + name; }

  // attnctl ARGS... with `env` ("NAME=value") added, run to its exit.
  static RunResult Attnctl(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), ATTNCTL_BINARY);
    return RunToExit(args, env, std::chrono::seconds(60));
  }
  // `attnctl infer --json` of a random request for kModel through `flags`;
  // expects exit 0 and the reference engine's answer.
  static void ExpectInferMatches(const std::vector<std::string>& flags,
                                 const std::vector<std::string>& env = {}) {
    std::mt19937 rng(11);
    const v1::AttendRequest request =
        RandomMixedRequest(rng, 1, kModel, oracle_->config(kModel).d_model, 20);
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(request, &json).ok());
    const std::string path = *certs_ + "/request.json";
    std::ofstream(path) << json;
    std::vector<std::string> args = {"infer", "--json", path};
    args.insert(args.end(), flags.begin(), flags.end());
    const RunResult run = Attnctl(args, env);
    ASSERT_EQ(run.exit_code, 0) << absl::StrJoin(args, " ") << "\n" << run.output;
    v1::AttendResponse reply;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                    run.output.substr(run.output.rfind("{\"request_id\"")), &reply).ok())
        << run.output;
    EXPECT_TRUE(oracle_->Matches(kModel, request, reply));
  }
  // Expects attnctl ARGS to fail (exit 1) with `code` printed.
  static void ExpectRefused(const std::vector<std::string>& args, const std::string& code,
                            const std::vector<std::string>& env = {}) {
    const RunResult run = Attnctl(args, env);
    EXPECT_EQ(run.exit_code, 1) << absl::StrJoin(args, " ") << "\n" << run.output;
    EXPECT_THAT(run.output, HasSubstr("error: " + code + ": ")) << absl::StrJoin(args, " ");
  }

  static std::string* certs_;
  static ReferenceOracle* oracle_;
};
std::string* ClientTlsTest::certs_ = nullptr;
ReferenceOracle* ClientTlsTest::oracle_ = nullptr;

TEST_F(ClientTlsTest, TlsServesClientsThatTrustItsCaOnly) {
  ServerBinary server = StartServer({"--tls-cert", Cert("server.pem"), "--tls-key",
                                     Cert("server.key")});
  ASSERT_GT(server.port, 0);
  const std::string target = server.target();
  ExpectInferMatches({"--target", target, "--tls-ca", Cert("ca.pem")});
  for (const char* command : {"models", "health"}) {
    const RunResult run = Attnctl({command, "--target", target, "--tls-ca", Cert("ca.pem")});
    EXPECT_EQ(run.exit_code, 0) << command << "\n" << run.output;
  }
  // The certificate's DNS name, and --tls-server-name when the target's
  // host is not a name the certificate carries.
  const std::string localhost = absl::StrCat("localhost:", server.port);
  const RunResult by_name = Attnctl({"models", "--target", localhost, "--tls-ca", Cert("ca.pem")});
  EXPECT_EQ(by_name.exit_code, 0) << by_name.output;
  EXPECT_EQ(Attnctl({"--tls-server-name", "localhost", "--target", target, "--tls-ca",
                     Cert("ca.pem"), "models"}).exit_code, 0);
  // Plaintext, the system roots, another CA, a name the certificate lacks.
  const std::vector<std::vector<std::string>> refused = {
      {"models"},
      {"models", "--tls"},
      {"models", "--tls-ca", Cert("other-ca.pem")},
      {"models", "--tls-ca", Cert("ca.pem"), "--tls-server-name", "attnserve.example"},
  };
  for (std::vector<std::string> args : refused) {
    args.insert(args.end(), {"--target", target, "--retries", "0"});
    ExpectRefused(args, "UNAVAILABLE");
  }
  // The load generator over TLS: every call answered.
  const RunResult bench = Attnctl({"bench", "-n", "30", "-c", "4", "--connections", "2",
                                   "--format", "json", "--target", target, "--tls-ca",
                                   Cert("ca.pem")});
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_EQ(nlohmann::json::parse(bench.output.substr(bench.output.find('{')))["codes"],
            nlohmann::json({{"OK", 30}}));
  StopServer(server);
}

TEST_F(ClientTlsTest, MtlsNeedsAValidClientCertificateFromTheCa) {
  ServerBinary server = StartServer({"--tls-cert", Cert("server.pem"), "--tls-key",
                                     Cert("server.key"), "--tls-client-ca", Cert("ca.pem")});
  ASSERT_GT(server.port, 0);
  const std::vector<std::string> tls = {"--target", server.target(), "--tls-ca", Cert("ca.pem"),
                                        "--retries", "0"};
  auto with = [&](std::vector<std::string> args, const std::string& client) {
    args.insert(args.end(), tls.begin(), tls.end());
    if (!client.empty()) {
      args.insert(args.end(), {"--tls-cert", Cert(client + ".pem"), "--tls-key",
                               Cert(client + ".key")});
    }
    return args;
  };
  ExpectInferMatches(with({}, "client-a"));
  EXPECT_EQ(Attnctl(with({"models"}, "client-b")).exit_code, 0);
  ExpectRefused(with({"models"}, ""), "UNAVAILABLE");                // no certificate
  ExpectRefused(with({"models"}, "client-other"), "UNAVAILABLE");    // another CA's
  ExpectRefused(with({"models"}, "client-expired"), "UNAVAILABLE");  // expired

  // AttentionClient itself, with the same files.
  client::ClientOptions options;
  options.target = server.target();
  options.tls = true;
  options.tls_root_certs_path = Cert("ca.pem");
  options.tls_client_cert_path = Cert("client-a.pem");
  options.tls_client_key_path = Cert("client-a.key");
  auto client = client::AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::mt19937 rng(5);
  const v1::AttendRequest request = RandomRequest(rng, kModel, 32, 9);
  v1::AttendResponse reply;
  const grpc::Status status = (*client)->Attend(request, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(oracle_->Matches(kModel, request, reply));
  StopServer(server);
}

TEST_F(ClientTlsTest, TokensNoneWrongRightAndNeverShown) {
  // `attnctl token --file` writes the server's line; the token is its stdout.
  const std::string tokens = *certs_ + "/tokens.txt";
  std::filesystem::remove(tokens);
  const RunResult made = Attnctl({"token", "--principal", "alice", "--file", tokens});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string token(absl::StripAsciiWhitespace(made.output));
  ASSERT_EQ(token.size(), 48u) << made.output;
  const std::string wrong = client::GenerateToken().value();
  const int health_port = FreeLoopbackPort();
  ServerBinary server = StartServer({"--tls-cert", Cert("server.pem"), "--tls-key",
                                     Cert("server.key"), "--auth-tokens", tokens,
                                     "--health-port", std::to_string(health_port)});
  ASSERT_GT(server.port, 0);
  const std::vector<std::string> tls = {"--target", server.target(), "--tls-ca", Cert("ca.pem"),
                                        "--retries", "0"};
  auto args = [&](std::vector<std::string> a, std::vector<std::string> more = {}) {
    a.insert(a.end(), tls.begin(), tls.end());
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  std::vector<RunResult> runs;
  auto refused = [&](const std::vector<std::string>& a, const std::vector<std::string>& env) {
    runs.push_back(Attnctl(a, env));
    EXPECT_EQ(runs.back().exit_code, 1) << absl::StrJoin(a, " ") << "\n" << runs.back().output;
    EXPECT_THAT(runs.back().output, HasSubstr("error: UNAUTHENTICATED: "));
    // Nothing about which tokens exist.
    EXPECT_THAT(runs.back().output, Not(HasSubstr("alice")));
    EXPECT_THAT(runs.back().output, Not(HasSubstr(client::TokenSha256Hex(token))));
  };
  refused(args({"models"}), {});                              // none
  refused(args({"models"}, {"--token", wrong}), {});          // wrong
  refused(args({"infer", "--random", "2"}), {"ATTNCTL_TOKEN=" + wrong});
  refused(args({"models"}, {"--token", token + "x"}), {});    // a near miss
  // Right: after the subcommand, before it, or from the environment.
  ExpectInferMatches(args({}, {"--token", token}));
  for (const auto& a : {args({"models", "--token", token}),
                        args({"--token", token, "models"}, {})}) {
    runs.push_back(Attnctl(a));
    EXPECT_EQ(runs.back().exit_code, 0) << runs.back().output;
  }
  runs.push_back(Attnctl(args({"models"}), {"ATTNCTL_TOKEN=" + token}));
  EXPECT_EQ(runs.back().exit_code, 0) << runs.back().output;
  // The load generator sends it on every call; without it, bench stops at
  // its first call (ListModels, for the model's d_model).
  runs.push_back(Attnctl(args({"bench", "-n", "20", "-c", "4", "--connections", "2",
                               "--format", "json"}), {"ATTNCTL_TOKEN=" + token}));
  ASSERT_EQ(runs.back().exit_code, 0) << runs.back().output;
  EXPECT_EQ(nlohmann::json::parse(runs.back().output.substr(runs.back().output.find('{')))
                ["codes"], nlohmann::json({{"OK", 20}}));
  refused(args({"bench", "-n", "10"}), {});
  // Health needs no token: on the TLS port, and on the plaintext probe port.
  runs.push_back(Attnctl(args({"health"})));
  EXPECT_EQ(runs.back().exit_code, 0) << runs.back().output;
  runs.push_back(Attnctl({"health", "--target", LoopbackTarget(health_port)}));
  EXPECT_EQ(runs.back().exit_code, 0) << runs.back().output;

  StopServer(server);
  for (const RunResult& run : runs) {
    EXPECT_THAT(run.output, Not(HasSubstr(token)));
    EXPECT_THAT(run.output, Not(HasSubstr(wrong)));
  }
  ASSERT_NE(server.child, nullptr);
  const std::string log = server.child->output();
  // The refusals were logged (one line per kind), without the tokens.
  EXPECT_THAT(log, HasSubstr("refused call (no_token)"));
  EXPECT_THAT(log, HasSubstr("refused call (bad_token)"));
  EXPECT_THAT(log, Not(HasSubstr(token)));
  EXPECT_THAT(log, Not(HasSubstr(wrong)));
  EXPECT_THAT(log, Not(HasSubstr(token.substr(5, 20))));  // not even a part
}

}  // namespace
}  // namespace attnserve::testing
