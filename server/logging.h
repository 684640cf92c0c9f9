// Logging: spdlog set up as text or JSON lines, and a rate limiter so a
// flood of bad requests cannot flood the log. Thread-safe.
#ifndef ATTNSERVE_SERVER_LOGGING_H_
#define ATTNSERVE_SERVER_LOGGING_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "server/clock.h"

namespace attnserve::server {

// Configures spdlog's default logger to write to stderr. `format`: "text"
// (`2026-11-21T20:33:00.123Z info message`) or "json" (one object per line:
// {"ts":"...","level":"info","msg":"..."} with the message JSON-escaped).
// `level`: trace, debug, info, warn, error, critical, off. Errors:
// INVALID_ARGUMENT naming the bad value and the accepted ones.
absl::Status SetUpLogging(const std::string& format, const std::string& level);

// Allows at most `per_second` events per second of `clock` (windows are the
// clock's whole seconds); the rest are counted. Used for warnings about
// rejected requests and engine failures.
class RateLimiter {
 public:
  // `clock` must outlive the limiter; nullptr = a process-wide RealClock.
  explicit RateLimiter(uint32_t per_second, const Clock* clock = nullptr);

  // True when this event may be logged. When true, *suppressed receives the
  // number of events refused since the last allowed one (to log "N similar
  // warnings suppressed").
  bool Allow(uint64_t* suppressed);

 private:
  static const Clock& DefaultClock();

  const uint32_t per_second_;
  const Clock* const clock_;
  std::mutex mu_;
  int64_t window_start_s_ = 0;  // guarded by mu_
  uint32_t used_ = 0;           // guarded by mu_
  uint64_t suppressed_ = 0;     // guarded by mu_
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_LOGGING_H_
