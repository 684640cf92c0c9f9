// Transport security and access control over real gRPC on 127.0.0.1, with
// certificates made at test time by openssl (tests/make_test_certs.sh): TLS,
// mTLS (missing, foreign-CA and expired client certificates refused),
// certificate rotation, bearer tokens, the authorization policy, health and
// reflection without credentials, the health-only port, auth metrics.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e_util.h"
#include "tests/http_util.h"
#include "tests/tls_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAttendPath[] = "/attnserve.v1.Attention/Attend";
const std::string kPrincipalA = "spiffe://attnserve.test/client-a";
const std::string kPrincipalB = "spiffe://attnserve.test/client-b";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = TestPki::Make(::testing::TempDir());
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    ca_ = pki_.Read("ca.pem");
  }

  // Options for a server on the golden models with `pki_`'s server cert.
  server::ServerOptions Options(bool tls, bool mtls) {
    server::ServerOptions o = LoopbackOptions(GoldenRepository());
    if (tls) {
      o.security.tls_cert_path = pki_.Path("server.pem");
      o.security.tls_key_path = pki_.Path("server.key");
    }
    if (mtls) o.security.tls_client_ca_path = pki_.Path("ca.pem");
    o.security.tls_refresh_s = 1;
    o.security.reload_interval_ms = 50;
    return o;
  }

  std::shared_ptr<grpc::Channel> ClientChannel(int port, const std::string& name, int index = 0) {
    return TlsChannel(port, ca_, pki_.Read(name + ".pem"), pki_.Read(name + ".key"), index);
  }

  // Attend with an optional bearer token; a 5 s deadline.
  static grpc::Status Attend(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& token = "",
                             std::string* server_serial = nullptr) {
    std::mt19937 rng(7);
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(5000));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::AttendResponse reply;
    const grpc::Status s = v1::Attention::NewStub(channel)->Attend(
        &context, RandomRequest(rng, "mha_plain", 32, 4), &reply);
    if (s.ok() && reply.output().rows() != 4) return grpc::Status(grpc::StatusCode::INTERNAL, "rows");
    if (server_serial != nullptr) *server_serial = PeerCertificateSerial(context);
    return s;
  }

  static grpc::Status ListModels(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& token = "") {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(5000));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::ListModelsResponse reply;
    return v1::Attention::NewStub(channel)->ListModels(&context, {}, &reply);
  }

  // One AttendStream message; the stream's final status.
  static grpc::Status StreamOnce(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& token = "") {
    std::mt19937 rng(8);
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(5000));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    auto stream = v1::Attention::NewStub(channel)->AttendStream(&context);
    stream->Write(RandomRequest(rng, "mha_plain", 32, 3));
    stream->WritesDone();
    v1::AttendResponse reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  }

  static int Health(const std::shared_ptr<grpc::Channel>& channel, grpc::StatusCode* code) {
    int serving = 0;
    *code = HealthCheck(channel, "", &serving).error_code();
    return serving;
  }

  TestPki pki_;
  std::string ca_;
};

TEST_F(SecurityTest, TlsServesTlsClientsAndRefusesPlaintextAndForeignTrust) {
  auto server = StartLoopbackServer(Options(/*tls=*/true, /*mtls=*/false));
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  std::string serial;
  EXPECT_TRUE(Attend(TlsChannel(port, ca_), "", &serial).ok());
  EXPECT_EQ(serial, "1001");
  EXPECT_EQ(Attend(LoopbackChannel(port)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Attend(TlsChannel(port, pki_.Read("other-ca.pem"))).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  grpc::StatusCode code;
  EXPECT_EQ(Health(TlsChannel(port, ca_), &code), 1);
  EXPECT_EQ(code, grpc::StatusCode::OK);
}

TEST_F(SecurityTest, MtlsRefusesMissingForeignAndExpiredClientCertificates) {
  auto server = StartLoopbackServer(Options(true, true));
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  EXPECT_TRUE(Attend(ClientChannel(port, "client-a")).ok());
  EXPECT_TRUE(Attend(ClientChannel(port, "client-b")).ok());
  EXPECT_EQ(Attend(TlsChannel(port, ca_)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Attend(ClientChannel(port, "client-other")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Attend(ClientChannel(port, "client-expired")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Attend(LoopbackChannel(port)).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, RotatedCertificateReachesNewConnectionsAndOldOnesKeepWorking) {
  // The server reads live.pem/live.key, which start as `server` and are
  // replaced (atomic renames, like a Secret update) by `server2`.
  server::ServerOptions o = Options(true, true);
  o.security.tls_cert_path = pki_.Path("live.pem");
  o.security.tls_key_path = pki_.Path("live.key");
  WriteFile(o.security.tls_cert_path, pki_.Read("server.pem"));
  WriteFile(o.security.tls_key_path, pki_.Read("server.key"));
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  auto old_channel = ClientChannel(port, "client-a", 0);
  std::string serial;
  ASSERT_TRUE(Attend(old_channel, "", &serial).ok());
  EXPECT_EQ(serial, "1001");

  // Calls on the existing connection run throughout the rotation.
  std::atomic<bool> stop{false};
  std::atomic<int> old_ok{0}, old_failed{0};
  std::thread load([&] {
    while (!stop.load()) (Attend(old_channel).ok() ? old_ok : old_failed).fetch_add(1);
  });
  ReplaceFile(pki_.Path("live.key"), pki_.Read("server2.key"));
  ReplaceFile(pki_.Path("live.pem"), pki_.Read("server2.pem"));
  int index = 1;
  const bool rotated = WaitFor(
      [&] {
        std::string s;
        return Attend(ClientChannel(port, "client-a", index++), "", &s).ok() && s == "1002";
      },
      std::chrono::seconds(15));
  stop = true;
  load.join();
  EXPECT_TRUE(rotated) << "new connections never saw serial 1002 (refresh 1 s)";
  EXPECT_GT(old_ok.load(), 0);
  EXPECT_EQ(old_failed.load(), 0);
  EXPECT_TRUE(Attend(old_channel).ok());
}

TEST_F(SecurityTest, TokensNoneWrongRightAndRevokedByEditingTheFile) {
  server::ServerOptions o = Options(true, false);
  const std::string tokens = pki_.Path("tokens");
  const std::string token_a = "tok-a-7f3e9c1d2b4a", token_b = "tok-b-55aa33cc";
  WriteFile(tokens, "# principals and token hashes\n\nalice " + Sha256Hex(token_a) +
                        "\nbob " + Sha256Hex(token_b) + "\n");
  o.security.auth_tokens_path = tokens;
  o.metrics_port = 0;
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  auto channel = TlsChannel(server->port(), ca_);

  grpc::Status none = Attend(channel);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status wrong = Attend(channel, "tok-a-guess");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.error_message(), Not(HasSubstr("alice")));
  EXPECT_THAT(wrong.error_message(), Not(HasSubstr("tok-")));
  EXPECT_EQ(StreamOnce(channel).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Attend(channel, token_a).ok());
  EXPECT_TRUE(StreamOnce(channel, token_a).ok());
  EXPECT_TRUE(ListModels(channel, token_b).ok());
  // Health and reflection need no token.
  grpc::StatusCode code;
  EXPECT_EQ(Health(channel, &code), 1);
  std::vector<std::string> services;
  EXPECT_TRUE(ReflectionListServices(channel, &services).ok());

  // Revoke alice by rewriting the file in place: takes effect without restart.
  WriteFile(tokens, "bob " + Sha256Hex(token_b) + "\n");
  EXPECT_TRUE(WaitFor([&] { return Attend(channel, token_a).error_code() ==
                                   grpc::StatusCode::UNAUTHENTICATED; },
                      std::chrono::seconds(10)));
  EXPECT_TRUE(Attend(channel, token_b).ok());
  // A broken edit keeps the last good tokens.
  WriteFile(tokens, "bob not-a-hash\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(Attend(channel, token_b).ok());
  EXPECT_EQ(Attend(channel, token_a).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto& metrics = server->metrics();
  EXPECT_EQ(CounterValue(metrics, "attnserve_auth_failures_total", {{"reason", "no_token"}}), 2);
  EXPECT_GE(CounterValue(metrics, "attnserve_auth_failures_total", {{"reason", "bad_token"}}), 3);
  EXPECT_EQ(CounterValue(metrics, "attnserve_auth_failures_total", {{"reason", "denied"}}), 0);
}

// A may Attend (unary and stream) but not ListModels; B the reverse.
std::string PolicyJson(const std::string& a, const std::string& b) {
  return R"({
  "name": "attnserve-test",
  "deny_rules": [{"name": "nobody-else", "source": {"principals": ["*client-evil"]}}],
  "allow_rules": [
    {"name": "a-attends", "source": {"principals": [")" + a + R"("]},
     "request": {"paths": ["/attnserve.v1.Attention/Attend*"]}},
    {"name": "b-lists", "source": {"principals": [")" + b + R"("]},
     "request": {"paths": ["/attnserve.v1.Attention/ListModels"]}}
  ]
})";
}

TEST_F(SecurityTest, PolicyOnCertificatePrincipalsPerMethodWithLiveEdits) {
  server::ServerOptions o = Options(true, true);
  const std::string policy = pki_.Path("policy.json");
  WriteFile(policy, PolicyJson(kPrincipalA, kPrincipalB));
  o.security.authz_policy_path = policy;
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  auto a = ClientChannel(server->port(), "client-a", 1);
  auto b = ClientChannel(server->port(), "client-b", 2);
  EXPECT_TRUE(Attend(a).ok());
  EXPECT_TRUE(StreamOnce(a).ok());
  EXPECT_EQ(ListModels(a).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Attend(b).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(StreamOnce(b).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ListModels(b).ok());
  grpc::StatusCode code;
  EXPECT_EQ(Health(b, &code), 1);  // never denied
  auto denied = [&] {
    return CounterValue(server->metrics(), "attnserve_auth_failures_total", {{"reason", "denied"}});
  };
  EXPECT_EQ(denied(), 3);

  // Swap the roles: takes effect without restart.
  WriteFile(policy, PolicyJson(kPrincipalB, kPrincipalA));
  int refused_while_waiting = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        const grpc::Status s = Attend(b);
        refused_while_waiting += s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
        return s.ok();
      },
      std::chrono::seconds(10)));
  EXPECT_TRUE(ListModels(a).ok());
  EXPECT_EQ(Attend(a).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // A broken edit (unsupported field) keeps the last good policy.
  WriteFile(policy, R"({"name": "x", "allow_rules": [{"name": "all", "request": {"headers": []}}]})");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(Attend(a).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Attend(b).ok());
  EXPECT_EQ(denied(), 3 + refused_while_waiting + 2);
}

TEST_F(SecurityTest, PolicyOnTokenPrincipalsOverPlaintextAndMetricsEndpoint) {
  server::ServerOptions o = Options(false, false);
  const std::string tokens = pki_.Path("tokens"), policy = pki_.Path("policy.json");
  WriteFile(tokens, "A " + Sha256Hex("token-of-a") + "\nB " + Sha256Hex("token-of-b") + "\n");
  WriteFile(policy, PolicyJson("A", "B"));
  o.security.auth_tokens_path = tokens;
  o.security.authz_policy_path = policy;
  o.metrics_port = FreeLoopbackPort();
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  auto channel = LoopbackChannel(server->port());
  EXPECT_TRUE(Attend(channel, "token-of-a").ok());
  EXPECT_EQ(ListModels(channel, "token-of-a").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Attend(channel, "token-of-b").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ListModels(channel, "token-of-b").ok());
  EXPECT_EQ(ListModels(channel).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListModels(channel, "nope").error_code(), grpc::StatusCode::UNAUTHENTICATED);

  const auto page = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_TRUE(page.has_value());
  EXPECT_THAT(page->body, HasSubstr("attnserve_auth_failures_total{reason=\"denied\"} 2"));
  EXPECT_THAT(page->body, HasSubstr("attnserve_auth_failures_total{reason=\"no_token\"} 1"));
  EXPECT_THAT(page->body, HasSubstr("attnserve_auth_failures_total{reason=\"bad_token\"} 1"));
  EXPECT_THAT(page->body, Not(HasSubstr("token-of")));
}

TEST_F(SecurityTest, HealthPortServesOnlyHealthInPlaintextAndReflectionCanBeOff) {
  server::ServerOptions o = Options(true, true);
  o.security.auth_tokens_path = pki_.Path("tokens");
  WriteFile(o.security.auth_tokens_path, "A " + Sha256Hex("t") + "\n");
  o.security.health_port = FreeLoopbackPort();
  o.security.reflection = false;
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->health_port(), o.security.health_port);
  auto probe = LoopbackChannel(server->health_port());
  grpc::StatusCode code;
  EXPECT_EQ(Health(probe, &code), 1);
  EXPECT_EQ(code, grpc::StatusCode::OK);
  int serving = 0;
  EXPECT_TRUE(HealthCheck(probe, "mha_plain", &serving).ok());
  EXPECT_EQ(serving, 1);
  EXPECT_EQ(Attend(probe, "t").error_code(), grpc::StatusCode::UNIMPLEMENTED);
  std::vector<std::string> services;
  EXPECT_EQ(ReflectionListServices(probe, &services).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // Reflection off on the main port too; health there needs mTLS but no token.
  auto main = ClientChannel(server->port(), "client-a");
  EXPECT_EQ(ReflectionListServices(main, &services).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Health(main, &code), 1);
  // Draining turns both NOT_SERVING... checked via the main server's drain.
  std::thread drain([&] { server->Drain(); });
  EXPECT_TRUE(WaitFor([&] { return Health(probe, &code) == 2; }, std::chrono::seconds(5)));
  drain.join();
}

TEST_F(SecurityTest, BadSecurityFilesFailStartupNamingTheFile) {
  server::ServerOptions o = Options(true, false);
  o.security.tls_key_path = pki_.Path("server2.key");  // not server.pem's key
  auto s = server::AttnServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("server2.key"));

  o = Options(false, false);
  o.security.auth_tokens_path = pki_.Path("tokens");
  WriteFile(o.security.auth_tokens_path, "A " + Sha256Hex("t") + "\n# ok\nB deadbeef\n");
  s = server::AttnServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr(pki_.Path("tokens") + ":3:"));

  o = Options(false, false);
  o.security.authz_policy_path = pki_.Path("policy.json");
  WriteFile(o.security.authz_policy_path, "{\"name\": \"p\", \"allow_rules\": [");
  s = server::AttnServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("policy.json"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("not valid JSON"));
}

std::vector<std::string> BinaryArgs(const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                   "--metrics-port", "0", "--model-repository",
                                   GoldenRepository()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

TEST_F(SecurityTest, BinaryUnderMtlsAndTokensLogsTheModeNotSecretsAndDrainsToExitZero) {
  const std::string token = "s3cret-token-value-42";
  WriteFile(pki_.Path("tokens"), "client-a " + Sha256Hex(token) + "\n");
  const int health_port = FreeLoopbackPort();
  WriteFile(pki_.Path("live.pem"), pki_.Read("server.pem"));
  WriteFile(pki_.Path("live.key"), pki_.Read("server.key"));
  auto child = ChildProcess::Start(BinaryArgs(
      {"--tls-cert", pki_.Path("live.pem"), "--tls-key", pki_.Path("live.key"),
       "--tls-client-ca", pki_.Path("ca.pem"), "--tls-refresh-s", "1", "--auth-tokens",
       pki_.Path("tokens"), "--health-port", std::to_string(health_port)}));
  ASSERT_TRUE(child.ok()) << child.status();
  ChildProcess& server = **child;
  const int port = WaitForServingPort(server);
  ASSERT_GT(port, 0) << server.output();
  EXPECT_THAT(server.output(), HasSubstr("security: mTLS (client certificates required"));
  EXPECT_THAT(server.output(), HasSubstr("bearer tokens on"));
  EXPECT_THAT(server.output(), HasSubstr("serial 1001"));
  auto channel = ClientChannel(port, "client-a");
  EXPECT_TRUE(Attend(channel, token).ok());
  EXPECT_EQ(Attend(channel, token + "x").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::StatusCode code;
  auto probe = LoopbackChannel(health_port);
  EXPECT_EQ(Health(probe, &code), 1);
  // A renewal is logged with the new serial.
  ReplaceFile(pki_.Path("live.key"), pki_.Read("server2.key"));
  ReplaceFile(pki_.Path("live.pem"), pki_.Read("server2.pem"));
  EXPECT_TRUE(server.WaitForLine("live.pem changed: subject CN=localhost,O=attnserve test, "
                                 "serial 1002", std::chrono::seconds(10)).has_value())
      << server.output();

  server.Signal(SIGTERM);
  const auto status = server.WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value()) << server.output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server.output();
  const std::string output = server.WaitOutputEnd(std::chrono::seconds(5));
  EXPECT_THAT(output, Not(HasSubstr(token)));
  EXPECT_THAT(output, Not(HasSubstr(Sha256Hex(token))));
  EXPECT_THAT(output, Not(HasSubstr("PRIVATE KEY")));
}

TEST_F(SecurityTest, BinaryExitsTwoOnABadTokenFileOrPolicyNamingIt) {
  WriteFile(pki_.Path("tokens"), "# header\nclient-a plain-token-not-a-hash\n");
  RunResult r = RunToExit(BinaryArgs({"--auth-tokens", pki_.Path("tokens")}), {},
                          std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr(pki_.Path("tokens") + ":2:"));
  EXPECT_THAT(r.output, Not(HasSubstr("plain-token-not-a-hash")));
  WriteFile(pki_.Path("policy.json"), R"({"name": "p", "allow_rules": [{"name": 3}]})");
  r = RunToExit(BinaryArgs({"--authz-policy", pki_.Path("policy.json")}), {},
                std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr(pki_.Path("policy.json") + ": allow_rules[0]: 'name'"));
}

}  // namespace
}  // namespace attnserve::testing
