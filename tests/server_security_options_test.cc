// The security flags: names, environment variables, defaults, validation.
#include <cstdlib>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/options.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;

absl::Status Parse(std::vector<const char*> args, ServerOptions* o) {
  args.insert(args.begin(), "attnserve");
  bool exit_now = false;
  std::string help;
  return ParseServerOptions(static_cast<int>(args.size()), args.data(), o, &exit_now, &help);
}

TEST(SecurityOptionsTest, DefaultsArePlaintextWithReflectionAndNoHealthPort) {
  ServerOptions o;
  ASSERT_TRUE(Parse({}, &o).ok());
  EXPECT_FALSE(o.security.tls());
  EXPECT_TRUE(o.security.reflection);
  EXPECT_EQ(o.security.health_port, 0);
  EXPECT_EQ(o.security.tls_refresh_s, 60);
  EXPECT_EQ(o.metrics_host, "0.0.0.0");
}

TEST(SecurityOptionsTest, FlagsAndEnvironment) {
  ServerOptions o;
  ASSERT_TRUE(Parse({"--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem",
                     "--tls-refresh-s", "5", "--auth-tokens", "t", "--authz-policy", "p.json",
                     "--health-port", "8081", "--reflection=false", "--metrics-address",
                     "127.0.0.1"},
                    &o)
                  .ok());
  EXPECT_EQ(o.security.tls_cert_path, "c.pem");
  EXPECT_EQ(o.security.tls_key_path, "k.pem");
  EXPECT_TRUE(o.security.mtls());
  EXPECT_EQ(o.security.tls_refresh_s, 5);
  EXPECT_EQ(o.security.auth_tokens_path, "t");
  EXPECT_EQ(o.security.authz_policy_path, "p.json");
  EXPECT_EQ(o.security.health_port, 8081);
  EXPECT_FALSE(o.security.reflection);
  EXPECT_EQ(o.metrics_host, "127.0.0.1");

  ServerOptions old;  // --metrics-host: the old name
  ASSERT_TRUE(Parse({"--metrics-host", "10.0.0.1", "--reflection"}, &old).ok());
  EXPECT_EQ(old.metrics_host, "10.0.0.1");
  EXPECT_TRUE(old.security.reflection);

  setenv("ATTNSERVE_REFLECTION", "false", 1);
  setenv("ATTNSERVE_HEALTH_PORT", "9091", 1);
  setenv("ATTNSERVE_METRICS_HOST", "10.0.0.2", 1);
  ServerOptions env;
  const absl::Status s = Parse({}, &env);
  unsetenv("ATTNSERVE_REFLECTION");
  unsetenv("ATTNSERVE_HEALTH_PORT");
  unsetenv("ATTNSERVE_METRICS_HOST");
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_FALSE(env.security.reflection);
  EXPECT_EQ(env.security.health_port, 9091);
  EXPECT_EQ(env.metrics_host, "10.0.0.2");
}

TEST(SecurityOptionsTest, InconsistentFlagsAreRejectedNamingTheFlag) {
  const std::vector<std::pair<std::vector<const char*>, std::string>> cases = {
      {{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
      {{"--tls-key", "k.pem"}, "--tls-cert and --tls-key go together"},
      {{"--tls-client-ca", "ca.pem"}, "--tls-client-ca needs --tls-cert"},
      {{"--tls-refresh-s", "0"}, "--tls-refresh-s must be in [1, 86400]"},
      {{"--health-port", "70000"}, "--health-port must be in [0, 65535]"},
      {{"--health-port", "50051"}, "--health-port must differ from --port"},
  };
  for (const auto& [args, expected] : cases) {
    ServerOptions o;
    const absl::Status s = Parse(args, &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << expected;
    EXPECT_THAT(std::string(s.message()), HasSubstr(expected));
  }
}

}  // namespace
}  // namespace attnserve::server
