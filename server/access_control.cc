#include "server/access_control.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::server {
namespace {

constexpr const char* kReasonNames[] = {"no_token", "bad_token", "denied"};

// Services every caller may use without credentials. KServe v2's ServerLive
// and ServerReady are health probes too (they say nothing about models);
// ModelReady, the metadata calls and ModelInfer are guarded like attnserve.v1.
bool IsOpenPath(std::string_view path) {
  return path.starts_with("/grpc.health.v1.Health/") ||
         path == "/inference.GRPCInferenceService/ServerLive" ||
         path == "/inference.GRPCInferenceService/ServerReady" ||
         path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") ||
         path.starts_with("/grpc.reflection.v1.ServerReflection/");
}

// The token of an "authorization: Bearer TOKEN" value (scheme
// case-insensitive, RFC 6750); nullopt for any other form.
std::optional<std::string_view> BearerToken(std::string_view value) {
  constexpr std::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(value[i])) != kScheme[i]) return std::nullopt;
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (value.empty()) return std::nullopt;
  return value;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AccessControl>> AccessControl::Create(
    const SecurityOptions& options, Metrics* metrics, Clock* clock) {
  if (options.auth_tokens_path.empty() && options.authz_policy_path.empty()) return nullptr;
  auto ac = std::unique_ptr<AccessControl>(new AccessControl());
  ac->options_ = options;
  auto& family = prometheus::BuildCounter()
                     .Name("attnserve_auth_failures_total")
                     .Help("Calls refused by access control, by reason: no_token, bad_token "
                           "(unknown or malformed), denied (authorization policy).")
                     .Register(*metrics->registry());
  for (int r = 0; r < kReasons; ++r) {
    ac->failures_[r] = &family.Add({{"reason", kReasonNames[r]}});
    ac->log_limiters_[r] = std::make_unique<RateLimiter>(1);
  }
  const int64_t interval_us = options.reload_interval_ms * 1000;
  if (!options.auth_tokens_path.empty()) {
    auto text = ReadWholeFile(options.auth_tokens_path);
    if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("--auth-tokens: ", text.status().message()));
    auto tokens = TokenSet::Parse(*text, options.auth_tokens_path);
    if (!tokens.ok()) return absl::InvalidArgumentError(absl::StrCat("--auth-tokens ", tokens.status().message()));
    ac->tokens_ = std::make_shared<const TokenSet>(*std::move(tokens));
    ac->token_watcher_ = std::make_unique<FileWatcher>(
        options.auth_tokens_path, interval_us, clock,
        [a = ac.get()](const absl::StatusOr<std::string>& c) { a->OnTokensChanged(c); });
  }
  if (!options.authz_policy_path.empty()) {
    auto text = ReadWholeFile(options.authz_policy_path);
    if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("--authz-policy: ", text.status().message()));
    auto policy = AuthzPolicy::Parse(*text, options.authz_policy_path);
    if (!policy.ok()) return absl::InvalidArgumentError(absl::StrCat("--authz-policy ", policy.status().message()));
    ac->policy_ = std::make_shared<const AuthzPolicy>(*std::move(policy));
    ac->policy_watcher_ = std::make_unique<FileWatcher>(
        options.authz_policy_path, interval_us, clock,
        [a = ac.get()](const absl::StatusOr<std::string>& c) { a->OnPolicyChanged(c); });
  }
  return ac;
}

AccessControl::~AccessControl() {
  token_watcher_.reset();
  policy_watcher_.reset();
}

void AccessControl::StopWatching() {
  if (token_watcher_) token_watcher_->Stop();
  if (policy_watcher_) policy_watcher_->Stop();
}

std::shared_ptr<const TokenSet> AccessControl::tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

std::shared_ptr<const AuthzPolicy> AccessControl::policy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return policy_;
}

void AccessControl::OnTokensChanged(const absl::StatusOr<std::string>& contents) {
  absl::StatusOr<TokenSet> parsed =
      contents.ok() ? TokenSet::Parse(*contents, options_.auth_tokens_path) : contents.status();
  if (!parsed.ok()) {
    spdlog::error("--auth-tokens changed but cannot be used; keeping the previous tokens: {}",
                  std::string(parsed.status().message()));
    return;
  }
  const size_t count = parsed->size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_ = std::make_shared<const TokenSet>(*std::move(parsed));
  }
  spdlog::info("--auth-tokens {} reloaded: {} token(s)", options_.auth_tokens_path, count);
}

void AccessControl::OnPolicyChanged(const absl::StatusOr<std::string>& contents) {
  absl::StatusOr<AuthzPolicy> parsed =
      contents.ok() ? AuthzPolicy::Parse(*contents, options_.authz_policy_path) : contents.status();
  if (!parsed.ok()) {
    spdlog::error("--authz-policy changed but cannot be used; keeping the previous policy: {}",
                  std::string(parsed.status().message()));
    return;
  }
  const std::string name = parsed->name();
  {
    std::lock_guard<std::mutex> lock(mu_);
    policy_ = std::make_shared<const AuthzPolicy>(*std::move(parsed));
  }
  spdlog::info("--authz-policy {} reloaded: policy '{}'", options_.authz_policy_path, name);
}

void AccessControl::ReloadNow() {
  if (token_watcher_) token_watcher_->CheckNow();
  if (policy_watcher_) policy_watcher_->CheckNow();
}

absl::Status AccessControl::Fail(Reason reason, absl::Status status,
                                 const std::string& log_detail) {
  failures_[reason]->Increment();
  uint64_t suppressed = 0;
  if (log_limiters_[reason]->Allow(&suppressed)) {
    spdlog::warn("refused call ({}): {}{}", kReasonNames[reason], log_detail,
                 suppressed ? absl::StrCat(" (", suppressed, " similar refusals not logged)")
                            : std::string());
  }
  return status;
}

absl::Status AccessControl::Check(const Call& call) {
  if (IsOpenPath(call.path)) return absl::OkStatus();
  const std::string path(call.path);
  std::vector<std::string> principals(call.cert_principals.begin(), call.cert_principals.end());
  if (std::shared_ptr<const TokenSet> tokens = this->tokens(); tokens != nullptr) {
    if (!call.authorization.has_value()) {
      return Fail(kNoToken,
                  absl::UnauthenticatedError(
                      "missing credentials: send metadata 'authorization: Bearer <token>'"),
                  absl::StrCat(path, " without an authorization header"));
    }
    const std::optional<std::string_view> token = BearerToken(*call.authorization);
    std::optional<std::string> principal;
    if (token.has_value()) principal = tokens->Authenticate(*token);
    if (!principal.has_value()) {
      // One message for malformed and unknown alike; never the token.
      return Fail(kBadToken, absl::UnauthenticatedError("invalid credentials"),
                  absl::StrCat(path, token ? " with an unknown bearer token"
                                                : " with a malformed authorization header"));
    }
    principals.push_back(*std::move(principal));
  }
  if (std::shared_ptr<const AuthzPolicy> policy = this->policy(); policy != nullptr) {
    const AuthzDecision d = policy->Evaluate(call.path, principals);
    if (!d.allowed) {
      return Fail(kDenied,
                  absl::PermissionDeniedError(
                      absl::StrCat("permission denied: this caller may not call ", path)),
                  absl::StrCat(path, " by [", absl::StrJoin(principals, ", "), "]: ",
                               d.rule.empty() ? "no allow rule matches"
                                              : absl::StrCat("deny rule '", d.rule, "'")));
    }
  }
  return absl::OkStatus();
}

}  // namespace attnserve::server
