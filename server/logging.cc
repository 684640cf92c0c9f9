#include "server/logging.h"

#include <chrono>
#include <ctime>
#include <iterator>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/formatter.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace attnserve::server {
namespace {

// `ts` of both formats: UTC with milliseconds, "2026-11-21T20:33:00.123Z".
void AppendTimestamp(std::chrono::system_clock::time_point time, spdlog::memory_buf_t& dest) {
  const auto since_epoch = time.time_since_epoch();
  const std::time_t seconds =
      std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  const size_t length = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  dest.append(text, text + length);
  fmt::format_to(std::back_inserter(dest), ".{:03d}Z", static_cast<int>(millis));
}

// Appends `text` as the body of a JSON string (RFC 8259): quote, backslash
// and control characters escaped; other bytes, UTF-8 included, copied as is.
void AppendJsonEscaped(std::string_view text, spdlog::memory_buf_t& dest) {
  for (const char c : text) {
    switch (c) {
      case '"': dest.append(std::string_view("\\\"")); break;
      case '\\': dest.append(std::string_view("\\\\")); break;
      case '\n': dest.append(std::string_view("\\n")); break;
      case '\r': dest.append(std::string_view("\\r")); break;
      case '\t': dest.append(std::string_view("\\t")); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(dest), "\\u{:04x}",
                         static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          dest.push_back(c);
        }
    }
  }
}

// One JSON object per line: {"ts":"...Z","level":"info","msg":"..."}.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    dest.append(std::string_view(R"({"ts":")"));
    AppendTimestamp(msg.time, dest);
    dest.append(std::string_view(R"(","level":")"));
    const spdlog::string_view_t level = spdlog::level::to_string_view(msg.level);
    dest.append(level.data(), level.data() + level.size());
    dest.append(std::string_view(R"(","msg":")"));
    AppendJsonEscaped(std::string_view(msg.payload.data(), msg.payload.size()), dest);
    dest.append(std::string_view("\"}\n"));
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

constexpr char kAcceptedLevels[] =
    "trace, debug, info, warn, error, critical, off";

std::optional<spdlog::level::level_enum> ParseLevel(const std::string& name) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"warning", spdlog::level::warn}, {"error", spdlog::level::err},
      {"critical", spdlog::level::critical}, {"off", spdlog::level::off}};
  for (const auto& [level_name, level] : kLevels) {
    if (name == level_name) return level;
  }
  return std::nullopt;
}

}  // namespace

absl::Status SetUpLogging(const std::string& format, const std::string& level) {
  const std::optional<spdlog::level::level_enum> parsed_level = ParseLevel(level);
  if (!parsed_level) {
    return absl::InvalidArgumentError(absl::StrCat("unknown log level \"", level,
                                                   "\"; accepted: ", kAcceptedLevels));
  }
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log format \"", format, "\"; accepted: text, json"));
  }
  auto logger = std::make_shared<spdlog::logger>(
      "attnserve", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  }
  logger->set_level(*parsed_level);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

RateLimiter::RateLimiter(uint32_t per_second, const Clock* clock)
    : per_second_(per_second), clock_(clock != nullptr ? clock : &DefaultClock()) {}

const Clock& RateLimiter::DefaultClock() {
  static const RealClock* const kClock = new RealClock();  // never destroyed
  return *kClock;
}

bool RateLimiter::Allow(uint64_t* suppressed) {
  // Windows are the whole seconds of a monotonic clock: immune to wall-clock
  // jumps, and a burst can never exceed 2 * per_second_ in any second.
  constexpr int64_t kMicrosPerSecond = 1'000'000;
  const int64_t now_s = clock_->NowMicros() / kMicrosPerSecond;
  std::lock_guard<std::mutex> lock(mu_);
  if (now_s != window_start_s_) {
    window_start_s_ = now_s;
    used_ = 0;
  }
  if (used_ >= per_second_) {
    ++suppressed_;
    return false;
  }
  ++used_;
  if (suppressed != nullptr) *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

}  // namespace attnserve::server
