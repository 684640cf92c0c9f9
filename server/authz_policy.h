// AuthzPolicy: which principal may call which gRPC method, read from a subset
// of gRPC's authorization-policy JSON (the format of gRPC's
// FileWatcherAuthorizationPolicyProvider), so the same file works with gRPC's
// own engine later. An immutable value: thread-safe. Knows nothing of gRPC
// calls: the caller passes a method path and the caller's principals, so any
// API (Attention today, a model-management API later) can be guarded by it.
//
//   {
//     "name": "attnserve",
//     "deny_rules":  [ {"name": "...", "source": {"principals": ["..."]},
//                       "request": {"paths": ["..."]}} ],
//     "allow_rules": [ ... same shape ... ]
//   }
//
// "name" and "allow_rules" are required, "deny_rules" optional. A rule
// without "source" (or "principals") matches every caller, authenticated or
// not; without "request" (or "paths") every method. Patterns, for principals
// and paths alike: "*" (any; for principals: any authenticated caller),
// "abc*" (prefix), "*abc" (suffix), else exact. Deny wins: a call matching a
// deny rule is denied; otherwise it is allowed when it matches an allow rule,
// and denied when it matches none. Fields gRPC has that this subset does not
// (request.headers, ...) are rejected rather than ignored, since ignoring a
// condition would widen an allow rule.
#ifndef ATTNSERVE_SERVER_AUTHZ_POLICY_H_
#define ATTNSERVE_SERVER_AUTHZ_POLICY_H_

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace attnserve::server {

// "*", "abc*", "*abc" or an exact string, as in gRPC's policies.
class StringPattern {
 public:
  explicit StringPattern(std::string pattern);
  bool Matches(std::string_view value) const;
  bool any() const { return kind_ == Kind::kAny; }

 private:
  enum class Kind { kExact, kPrefix, kSuffix, kAny };
  Kind kind_;
  std::string text_;  // without the '*'
};

struct AuthzDecision {
  bool allowed = false;
  // The deciding rule: the matching deny rule, or the matching allow rule;
  // empty when denied because no allow rule matched.
  std::string rule;
};

class AuthzPolicy {
 public:
  // Parses the policy JSON. `source` names it in errors: INVALID_ARGUMENT
  // "SOURCE: allow_rules[1].request.paths[0]: must be a string".
  static absl::StatusOr<AuthzPolicy> Parse(std::string_view json, const std::string& source);

  // The decision for a call of `path` ("/attnserve.v1.Attention/Attend") by a
  // caller known as any of `principals` (empty: unauthenticated). A rule's
  // principal list matches when one pattern matches one principal.
  AuthzDecision Evaluate(std::string_view path, std::span<const std::string> principals) const;

  const std::string& name() const { return name_; }

 private:
  struct Rule {
    std::string name;
    std::vector<StringPattern> principals;  // empty: any caller
    std::vector<StringPattern> paths;       // empty: any path
    bool Matches(std::string_view path, std::span<const std::string> principals) const;
  };
  std::string name_;
  std::vector<Rule> deny_rules_;
  std::vector<Rule> allow_rules_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_AUTHZ_POLICY_H_
