#include "server/logging.h"

#include <atomic>
#include <chrono>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/spdlog.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Splits captured stderr into lines (without the '\n'); expects the text to
// end with a newline.
std::vector<std::string> Lines(const std::string& text) {
  EXPECT_TRUE(!text.empty() && text.back() == '\n') << text;
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    lines.push_back(text.substr(begin, end - begin));
  }
  return lines;
}

// Logs `message` at `level` through the default logger and returns what
// reached stderr.
std::string LogAndCapture(spdlog::level::level_enum level, const std::string& message) {
  ::testing::internal::CaptureStderr();
  spdlog::log(level, "{}", message);
  spdlog::default_logger()->flush();
  return ::testing::internal::GetCapturedStderr();
}

// "YYYY-MM-DDTHH:MM" of now in UTC.
std::string UtcMinuteNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M", &utc);
  return text;
}

constexpr char kTimestampRegex[] =
    "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z";

TEST(SetUpLoggingTest, JsonEscapesAndRoundTripsTheMessage) {
  ASSERT_TRUE(SetUpLogging("json", "info").ok());
  const std::string message =
      "say \"hi\" to C:\\temp\\x\nsecond line\tafter tab\r\x01\x1f end \xc3\xa9";
  const std::string captured = LogAndCapture(spdlog::level::info, message);

  const std::vector<std::string> lines = Lines(captured);
  ASSERT_EQ(lines.size(), 1u) << "one object per line: " << captured;
  EXPECT_THAT(lines[0], HasSubstr("\\u0001"));
  EXPECT_THAT(lines[0], HasSubstr("\\u001f"));
  const nlohmann::json parsed = nlohmann::json::parse(lines[0]);
  ASSERT_TRUE(parsed.is_object());
  EXPECT_EQ(parsed.size(), 3u);
  EXPECT_EQ(parsed.at("msg").get<std::string>(), message);
  EXPECT_EQ(parsed.at("level").get<std::string>(), "info");
  EXPECT_THAT(parsed.at("ts").get<std::string>(),
              MatchesRegex(std::string(kTimestampRegex)));
}

TEST(SetUpLoggingTest, JsonOneObjectPerLineWithLevelNames) {
  ASSERT_TRUE(SetUpLogging("json", "trace").ok());
  ::testing::internal::CaptureStderr();
  spdlog::debug("first");
  spdlog::warn("second {}", 2);
  spdlog::error("third");
  const std::vector<std::string> lines = Lines(::testing::internal::GetCapturedStderr());
  ASSERT_EQ(lines.size(), 3u);
  const char* expected[][2] = {{"debug", "first"}, {"warning", "second 2"}, {"error", "third"}};
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json parsed = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(parsed.at("level").get<std::string>(), expected[i][0]);
    EXPECT_EQ(parsed.at("msg").get<std::string>(), expected[i][1]);
  }
}

TEST(SetUpLoggingTest, TextLineShapeInUtc) {
  ASSERT_TRUE(SetUpLogging("text", "info").ok());
  const std::string before = UtcMinuteNow();
  const std::string captured = LogAndCapture(spdlog::level::info, "hello world");
  const std::string after = UtcMinuteNow();

  const std::vector<std::string> lines = Lines(captured);
  ASSERT_EQ(lines.size(), 1u) << captured;
  EXPECT_THAT(lines[0], MatchesRegex(std::string(kTimestampRegex) + " info hello world"));
  const std::string minute = lines[0].substr(0, before.size());
  EXPECT_TRUE(minute == before || minute == after) << lines[0] << " vs UTC " << before;
}

TEST(SetUpLoggingTest, LevelFiltersMessages) {
  for (const char* warn : {"warn", "warning"}) {
    SCOPED_TRACE(warn);
    ASSERT_TRUE(SetUpLogging("text", warn).ok());
    EXPECT_EQ(LogAndCapture(spdlog::level::info, "quiet"), "");
    EXPECT_THAT(LogAndCapture(spdlog::level::warn, "loud"), HasSubstr(" warning loud"));
    EXPECT_THAT(LogAndCapture(spdlog::level::err, "louder"), HasSubstr(" error louder"));
  }
  ASSERT_TRUE(SetUpLogging("text", "off").ok());
  EXPECT_EQ(LogAndCapture(spdlog::level::critical, "silenced"), "");
}

TEST(SetUpLoggingTest, AcceptsEveryDocumentedLevel) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    for (const char* format : {"text", "json"}) {
      EXPECT_TRUE(SetUpLogging(format, level).ok()) << format << " " << level;
    }
  }
}

TEST(SetUpLoggingTest, BadLevelIsInvalidArgument) {
  for (const char* level : {"verbose", "", "INFO", "err"}) {
    SCOPED_TRACE(level);
    const absl::Status status = SetUpLogging("text", level);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(std::string("\"") + level + "\""));
    EXPECT_THAT(status.message(), HasSubstr("trace, debug, info, warn, error, critical, off"));
  }
}

TEST(SetUpLoggingTest, BadFormatIsInvalidArgument) {
  const absl::Status status = SetUpLogging("yaml", "info");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"yaml\""));
  EXPECT_THAT(status.message(), HasSubstr("text, json"));
}

// RateLimiter windows are the whole seconds of its clock: a FakeClock, so
// every test knows exactly which window it is in (no sleeps, no races with
// the second boundary).
constexpr int64_t kSecondUs = 1'000'000;

TEST(RateLimiterTest, AllowsExactlyNPerWindow) {
  for (uint32_t per_second : {1u, 3u, 10u}) {
    SCOPED_TRACE(per_second);
    FakeClock clock(5 * kSecondUs + 999'999);  // the last microsecond of a window
    RateLimiter limiter(per_second, &clock);
    for (uint32_t i = 0; i < per_second; ++i) {
      uint64_t suppressed = 99;
      EXPECT_TRUE(limiter.Allow(&suppressed));
      EXPECT_EQ(suppressed, 0u);
    }
    for (int i = 0; i < 5; ++i) {
      uint64_t suppressed = 99;
      EXPECT_FALSE(limiter.Allow(&suppressed));
      EXPECT_EQ(suppressed, 99u) << "untouched when refused";
    }
    clock.Advance(1);  // the next window: a fresh budget
    uint64_t suppressed = 0;
    EXPECT_TRUE(limiter.Allow(&suppressed));
    EXPECT_EQ(suppressed, 5u);
  }
}

TEST(RateLimiterTest, ZeroAllowsNothing) {
  FakeClock clock;
  RateLimiter limiter(0, &clock);
  uint64_t suppressed = 0;
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(limiter.Allow(&suppressed));
    clock.Advance(kSecondUs);
  }
}

TEST(RateLimiterTest, ConcurrentCallersShareTheBudget) {
  constexpr uint32_t kPerSecond = 50;
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 100;
  FakeClock clock;
  RateLimiter limiter(kPerSecond, &clock);
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      uint64_t suppressed = 0;
      for (int i = 0; i < kCallsPerThread; ++i) allowed += limiter.Allow(&suppressed) ? 1 : 0;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(allowed.load(), static_cast<int>(kPerSecond));
}

TEST(RateLimiterTest, NextWindowReportsSuppressedCountOnce) {
  FakeClock clock;
  RateLimiter limiter(2, &clock);
  uint64_t suppressed = 99;
  ASSERT_TRUE(limiter.Allow(&suppressed));
  ASSERT_TRUE(limiter.Allow(&suppressed));
  for (int i = 0; i < 7; ++i) ASSERT_FALSE(limiter.Allow(&suppressed));
  clock.Advance(kSecondUs - 1);  // same window until the boundary
  ASSERT_FALSE(limiter.Allow(&suppressed));
  clock.Advance(1);
  ASSERT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 8u);
  ASSERT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 0u) << "the count is reported once";
}

TEST(RateLimiterTest, WithoutAClockUsesTheRealOne) {
  RateLimiter limiter(1);
  uint64_t suppressed = 99;
  EXPECT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 0u);
}

}  // namespace
}  // namespace attnserve::server
