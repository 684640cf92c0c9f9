// AuthzPolicy: the gRPC authorization-policy subset, its patterns and its
// decisions (deny wins, no allow rule -> denied).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/authz_policy.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;

TEST(StringPatternTest, ExactPrefixSuffixAndAny) {
  EXPECT_TRUE(StringPattern("abc").Matches("abc"));
  EXPECT_FALSE(StringPattern("abc").Matches("abcd"));
  EXPECT_TRUE(StringPattern("ab*").Matches("abcd"));
  EXPECT_TRUE(StringPattern("ab*").Matches("ab"));
  EXPECT_FALSE(StringPattern("ab*").Matches("xab"));
  EXPECT_TRUE(StringPattern("*cd").Matches("abcd"));
  EXPECT_FALSE(StringPattern("*cd").Matches("cde"));
  EXPECT_TRUE(StringPattern("*").Matches(""));
  EXPECT_TRUE(StringPattern("*").any());
}

AuthzPolicy MustParse(const std::string& json) {
  auto p = AuthzPolicy::Parse(json, "policy.json");
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : AuthzPolicy();
}

TEST(AuthzPolicyTest, DenyWinsAllowMatchesPrincipalAndPathAndNoMatchIsDenied) {
  const AuthzPolicy p = MustParse(R"({
    "name": "p",
    "deny_rules": [{"name": "no-mallory", "source": {"principals": ["mallory*"]}}],
    "allow_rules": [
      {"name": "attend", "source": {"principals": ["alice", "spiffe://x/*"]},
       "request": {"paths": ["/attnserve.v1.Attention/Attend*"]}},
      {"name": "list-any-authenticated", "source": {"principals": ["*"]},
       "request": {"paths": ["*/ListModels"]}},
      {"name": "open", "request": {"paths": ["/open.Service/Get"]}}
    ]})");
  EXPECT_EQ(p.name(), "p");
  const std::vector<std::string> alice = {"alice"}, spiffe = {"CN=x", "spiffe://x/y"},
                                 mallory = {"alice", "mallory-2"}, nobody = {};
  const std::string attend = "/attnserve.v1.Attention/Attend";
  const std::string stream = "/attnserve.v1.Attention/AttendStream";
  const std::string list = "/attnserve.v1.Attention/ListModels";
  EXPECT_TRUE(p.Evaluate(attend, alice).allowed);
  EXPECT_EQ(p.Evaluate(attend, alice).rule, "attend");
  EXPECT_TRUE(p.Evaluate(stream, spiffe).allowed);
  EXPECT_TRUE(p.Evaluate(list, alice).allowed);
  EXPECT_FALSE(p.Evaluate(list, nobody).allowed);  // "*" needs some principal
  AuthzDecision d = p.Evaluate(attend, mallory);   // deny wins over allow
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "no-mallory");
  d = p.Evaluate("/attnserve.v1.Models/Load", alice);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "");
  EXPECT_TRUE(p.Evaluate("/open.Service/Get", nobody).allowed);  // no source: anyone
  EXPECT_FALSE(p.Evaluate("/open.Service/Get", {std::vector<std::string>{"mallory"}}).allowed);
}

TEST(AuthzPolicyTest, RejectsWhatItCannotEnforceWithThePlace) {
  struct Case {
    std::string json, expected;
  };
  const Case cases[] = {
      {"{", "policy.json: not valid JSON"},
      {"[]", "must be a JSON object"},
      {R"({"allow_rules": []})", "'name' (a non-empty string) is required"},
      {R"({"name": "p"})", "'allow_rules' is required"},
      {R"({"name": "p", "allow_rules": {}})", "allow_rules: must be an array"},
      {R"({"name": "p", "allow_rules": [{"source": {}}]})", "allow_rules[0]: 'name'"},
      {R"({"name": "p", "allow_rules": [{"name": "r", "request": {"headers": []}}]})",
       "allow_rules[0].request: unsupported field 'headers'"},
      {R"({"name": "p", "allow_rules": [], "audit": 1})", "unsupported field 'audit'"},
      {R"({"name": "p", "allow_rules": [{"name": "r", "source": {"principals": []}}]})",
       "allow_rules[0].source.principals: must be a non-empty array"},
      {R"({"name": "p", "allow_rules": [], "deny_rules": [{"name": "r", "request": {"paths": [1]}}]})",
       "deny_rules[0].request.paths[0]: must be a non-empty string"},
  };
  for (const Case& c : cases) {
    auto p = AuthzPolicy::Parse(c.json, "policy.json");
    ASSERT_FALSE(p.ok()) << c.json;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.expected)) << c.json;
  }
}

}  // namespace
}  // namespace attnserve::server
