// AccessControl: decides, for each call on the main gRPC port, whether its
// caller is authenticated (a bearer token from --auth-tokens, or the mTLS
// certificate) and authorized (--authz-policy); keeps the token set and the
// policy current as their files change (a bad edit keeps the last good
// version and logs an error). Counts refusals in
// attnserve_auth_failures_total{reason} and logs each kind at most once a
// second. Thread-safe.
//
// Health (grpc.health.v1.Health, and KServe v2's ServerLive and ServerReady)
// and reflection calls are always allowed: probes and tools carry no
// credentials.
#ifndef ATTNSERVE_SERVER_ACCESS_CONTROL_H_
#define ATTNSERVE_SERVER_ACCESS_CONTROL_H_

#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "server/authz_policy.h"
#include "server/clock.h"
#include "server/file_watcher.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/security_options.h"
#include "server/token_file.h"

namespace prometheus {
class Counter;
}

namespace attnserve::server {

class AccessControl {
 public:
  // Loads --auth-tokens and --authz-policy (when set) and starts watching
  // them. A file that is missing or does not parse is INVALID_ARGUMENT naming
  // the file (and line, for tokens). Returns nullptr when neither is set:
  // there is nothing to check. `metrics` and `clock` must outlive the result.
  static absl::StatusOr<std::unique_ptr<AccessControl>> Create(const SecurityOptions& options,
                                                                Metrics* metrics, Clock* clock);
  ~AccessControl();

  // What a call presents.
  struct Call {
    std::string_view path;  // ":path", e.g. "/attnserve.v1.Attention/Attend"
    // The "authorization" metadata value; nullopt when absent.
    std::optional<std::string_view> authorization;
    // The verified client certificate's identities (URI SANs, DNS SANs,
    // subject), empty without mTLS.
    std::span<const std::string> cert_principals;
  };

  // OK, UNAUTHENTICATED (no or unknown token; the message never says which
  // tokens exist) or PERMISSION_DENIED (the policy refuses the method).
  absl::Status Check(const Call& call);

  // Re-reads both files now if they changed (tests; a thread does it every
  // reload_interval_ms).
  void ReloadNow();

  // Stops watching the files: joins the watchers' threads, after which no
  // thread of this object uses `clock` or `metrics` (Check still does, for
  // calls still made). The server calls it before it destroys them: gRPC's
  // server credentials hold this object and may outlive the server.
  // Idempotent; the tokens and policy last loaded stay in force.
  void StopWatching();

  bool tokens_on() const { return token_watcher_ != nullptr; }
  bool policy_on() const { return policy_watcher_ != nullptr; }

 private:
  enum Reason { kNoToken, kBadToken, kDenied, kReasons };
  AccessControl() = default;
  absl::Status Fail(Reason reason, absl::Status status, const std::string& log_detail);
  void OnTokensChanged(const absl::StatusOr<std::string>& contents);
  void OnPolicyChanged(const absl::StatusOr<std::string>& contents);
  std::shared_ptr<const TokenSet> tokens() const;
  std::shared_ptr<const AuthzPolicy> policy() const;

  // Constant after Create.
  SecurityOptions options_;
  prometheus::Counter* failures_[kReasons] = {};
  std::unique_ptr<RateLimiter> log_limiters_[kReasons];

  mutable std::mutex mu_;
  std::shared_ptr<const TokenSet> tokens_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const AuthzPolicy> policy_ ABSL_GUARDED_BY(mu_);

  // Declared last: destroyed (threads joined) before the state they update.
  std::unique_ptr<FileWatcher> token_watcher_;
  std::unique_ptr<FileWatcher> policy_watcher_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_ACCESS_CONTROL_H_
