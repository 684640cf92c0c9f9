#include "server/metrics.h"
#include "tests/http_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;
using testing::CommandResult;
using testing::HavePromtool;
using testing::HttpGet;
using testing::HttpResponse;
using testing::kPromtoolHint;
using testing::PromtoolCheckMetrics;

// Sums of a few binary-inexact seconds: only rounding separates them.
constexpr double kSumTolerance = 1e-12;

std::vector<prometheus::MetricFamily> Collect(const Metrics& metrics) {
  return metrics.registry()->Collect();
}

const prometheus::MetricFamily* FindFamily(const std::vector<prometheus::MetricFamily>& all,
                                           const std::string& name) {
  for (const auto& family : all) {
    if (family.name == name) return &family;
  }
  return nullptr;
}

// The series of `family` whose labels are exactly `labels`.
const prometheus::ClientMetric* FindSeries(const prometheus::MetricFamily& family,
                                           const std::map<std::string, std::string>& labels) {
  for (const auto& metric : family.metric) {
    std::map<std::string, std::string> have;
    for (const auto& label : metric.label) have[label.name] = label.value;
    if (have == labels) return &metric;
  }
  return nullptr;
}

// The one series of family `name` with `labels`; fails the test when absent.
prometheus::ClientMetric Series(const Metrics& metrics, const std::string& name,
                                const std::map<std::string, std::string>& labels) {
  const auto all = Collect(metrics);
  const prometheus::MetricFamily* family = FindFamily(all, name);
  if (family == nullptr) {
    ADD_FAILURE() << "no family " << name;
    return {};
  }
  const prometheus::ClientMetric* metric = FindSeries(*family, labels);
  if (metric == nullptr) {
    ADD_FAILURE() << "no series of " << name << " with the given labels";
    return {};
  }
  return *metric;
}

// Cumulative count of the bucket whose upper bound is `le`.
uint64_t BucketCount(const prometheus::ClientMetric& metric, double le) {
  for (const auto& bucket : metric.histogram.bucket) {
    if (bucket.upper_bound == le) return bucket.cumulative_count;
  }
  ADD_FAILURE() << "no bucket le=" << le;
  return 0;
}

std::vector<double> UpperBounds(const prometheus::ClientMetric& metric) {
  std::vector<double> bounds;
  for (const auto& bucket : metric.histogram.bucket) bounds.push_back(bucket.upper_bound);
  return bounds;
}

// The body of GET `path` on 127.0.0.1:`port`, or "" after a failed expectation.
std::string HttpGetBody(int port, const std::string& path) {
  const std::optional<HttpResponse> response = HttpGet(port, path);
  EXPECT_TRUE(response.has_value()) << "GET " << path << " on port " << port << " failed";
  if (!response) return "";
  EXPECT_EQ(response->status, 200) << response->body;
  return response->body;
}

// The value of the unlabelled sample `name` in exposition text, or -1.
double SampleValue(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

// Spends at least `seconds` of CPU so process_cpu_seconds_total (10 ms ticks)
// is certainly positive.
void BurnCpu(double seconds) {
  const std::clock_t start = std::clock();
  volatile uint64_t sink = 0;
  while (static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC < seconds) sink = sink + 1;
}

core::ModelConfig TestConfig() {
  core::ModelConfig config;
  config.d_model = 64;
  config.num_heads = 4;
  config.positional = core::Positional::kRotary;
  config.max_length = 2048;
  config.relevance = core::Relevance::kAdditive;
  config.normalization = core::Normalization::kRelu;
  config.projections = false;
  config.precision = core::Precision::kBf16;
  return config;
}

// Records one of everything, so every family has a series.
void RecordOneOfEach(Metrics& metrics) {
  metrics.AddModel("demo", TestConfig(), "0123456789ab");
  metrics.RequestFinished("demo", "OK", 0.004);
  metrics.RequestFinished("demo", "RESOURCE_EXHAUSTED", 0.0001);
  metrics.QueueWait("demo", 0.001);
  metrics.BatchDone("demo", 0.002, 2, 128);
  metrics.SetQueueDepth("demo", 3);
  metrics.InflightAdd(1);
}

double RequestCount(const Metrics& metrics, const std::string& model,
                    const std::string& code) {
  return Series(metrics, "attnserve_requests_total", {{"model", model}, {"code", code}})
      .counter.value;
}

TEST(MetricsTest, RequestsCountedPerModelAndCode) {
  Metrics metrics;
  for (int i = 0; i < 3; ++i) metrics.RequestFinished("a", "OK", 0.001);
  metrics.RequestFinished("a", "INVALID_ARGUMENT", 0.0002);
  metrics.RequestFinished("b", "OK", 2.0);

  EXPECT_DOUBLE_EQ(RequestCount(metrics, "a", "OK"), 3);
  EXPECT_DOUBLE_EQ(RequestCount(metrics, "a", "INVALID_ARGUMENT"), 1);
  EXPECT_DOUBLE_EQ(RequestCount(metrics, "b", "OK"), 1);
  const auto families = Collect(metrics);
  EXPECT_EQ(FindFamily(families, "attnserve_requests_total")->metric.size(), 3u);
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 1000;
  Metrics metrics;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics] {
      for (int i = 0; i < kPerThread; ++i) {
        metrics.InflightAdd(1);
        metrics.RequestFinished("a", "OK", 0.001);
        metrics.BatchDone("a", 0.001, 1, 2);
        metrics.InflightAdd(-1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_DOUBLE_EQ(RequestCount(metrics, "a", "OK"), kThreads * kPerThread);
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_tokens_total", {{"model", "a"}}).counter.value,
                   2.0 * kThreads * kPerThread);
  EXPECT_EQ(Series(metrics, "attnserve_batch_size", {{"model", "a"}}).histogram.sample_count,
            static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_inflight_requests", {}).gauge.value, 0);
}

TEST(MetricsTest, RequestDurationHistogram) {
  Metrics metrics;
  for (int i = 0; i < 3; ++i) metrics.RequestFinished("a", "OK", 0.001);
  metrics.RequestFinished("a", "INVALID_ARGUMENT", 0.0002);

  const auto h = Series(metrics, "attnserve_request_duration_seconds", {{"model", "a"}});
  EXPECT_EQ(h.histogram.sample_count, 4u);
  EXPECT_NEAR(h.histogram.sample_sum, 0.0032, kSumTolerance);
  EXPECT_EQ(BucketCount(h, 100e-6), 0u);
  EXPECT_EQ(BucketCount(h, 250e-6), 1u);
  EXPECT_EQ(BucketCount(h, 1e-3), 4u);  // upper bounds are inclusive
  EXPECT_EQ(BucketCount(h, std::numeric_limits<double>::infinity()), 4u);
}

TEST(MetricsTest, LatencyBucketsSpanMicrosecondsToSeconds) {
  Metrics metrics;
  metrics.RequestFinished("a", "OK", 0.5);
  metrics.QueueWait("a", 0.5);
  metrics.BatchDone("a", 0.5, 1, 1);
  const std::vector<double> expected = {
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
      100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, std::numeric_limits<double>::infinity()};
  for (const char* name : {"attnserve_request_duration_seconds",
                           "attnserve_queue_duration_seconds",
                           "attnserve_compute_duration_seconds"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(UpperBounds(Series(metrics, name, {{"model", "a"}})), expected);
  }
}

TEST(MetricsTest, QueueWaitHistogram) {
  Metrics metrics;
  metrics.QueueWait("a", 0.003);
  metrics.QueueWait("a", 20.0);  // beyond the last finite bucket

  const auto h = Series(metrics, "attnserve_queue_duration_seconds", {{"model", "a"}});
  EXPECT_EQ(h.histogram.sample_count, 2u);
  EXPECT_NEAR(h.histogram.sample_sum, 20.003, kSumTolerance);
  EXPECT_EQ(BucketCount(h, 2.5e-3), 0u);
  EXPECT_EQ(BucketCount(h, 5e-3), 1u);
  EXPECT_EQ(BucketCount(h, 10.0), 1u);
  EXPECT_EQ(BucketCount(h, std::numeric_limits<double>::infinity()), 2u);
}

TEST(MetricsTest, BatchDoneRecordsComputeSizeAndTokens) {
  Metrics metrics;
  metrics.BatchDone("a", 0.010, 3, 100);
  metrics.BatchDone("a", 0.030, 8, 5000);

  const auto compute = Series(metrics, "attnserve_compute_duration_seconds", {{"model", "a"}});
  EXPECT_EQ(compute.histogram.sample_count, 2u);
  EXPECT_NEAR(compute.histogram.sample_sum, 0.040, kSumTolerance);
  EXPECT_EQ(BucketCount(compute, 10e-3), 1u);
  EXPECT_EQ(BucketCount(compute, 50e-3), 2u);

  const auto size = Series(metrics, "attnserve_batch_size", {{"model", "a"}});
  EXPECT_EQ(size.histogram.sample_count, 2u);
  EXPECT_DOUBLE_EQ(size.histogram.sample_sum, 11);
  EXPECT_EQ(UpperBounds(size), (std::vector<double>{1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                   std::numeric_limits<double>::infinity()}));
  EXPECT_EQ(BucketCount(size, 2), 0u);
  EXPECT_EQ(BucketCount(size, 4), 1u);
  EXPECT_EQ(BucketCount(size, 8), 2u);

  const auto tokens = Series(metrics, "attnserve_batch_tokens", {{"model", "a"}});
  EXPECT_EQ(tokens.histogram.sample_count, 2u);
  EXPECT_DOUBLE_EQ(tokens.histogram.sample_sum, 5100);
  EXPECT_EQ(UpperBounds(tokens), (std::vector<double>{16, 64, 256, 1024, 4096, 16384, 65536,
                                                     262144,
                                                     std::numeric_limits<double>::infinity()}));
  EXPECT_EQ(BucketCount(tokens, 64), 0u);
  EXPECT_EQ(BucketCount(tokens, 256), 1u);
  EXPECT_EQ(BucketCount(tokens, 4096), 1u);
  EXPECT_EQ(BucketCount(tokens, 16384), 2u);

  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_tokens_total", {{"model", "a"}}).counter.value,
                   5100);
}

TEST(MetricsTest, Gauges) {
  Metrics metrics;
  metrics.SetQueueDepth("a", 7);
  metrics.SetQueueDepth("a", 5);
  metrics.SetQueueDepth("b", 2);
  metrics.InflightAdd(1);
  metrics.InflightAdd(1);
  metrics.InflightAdd(1);
  metrics.InflightAdd(-1);

  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_queue_depth", {{"model", "a"}}).gauge.value, 5);
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_queue_depth", {{"model", "b"}}).gauge.value, 2);
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_inflight_requests", {}).gauge.value, 2);
}

TEST(MetricsTest, ModelInfoCarriesTheConfig) {
  Metrics metrics;
  metrics.AddModel("demo", TestConfig(), "0123456789ab");
  const auto info = Series(metrics, "attnserve_model_info",
                           {{"model", "demo"},
                            {"version", "0123456789ab"},
                            {"precision", "bf16"},
                            {"positional", "rotary"},
                            {"relevance", "additive"},
                            {"normalization", "relu"},
                            {"projections", "false"},
                            {"d_model", "64"},
                            {"num_heads", "4"},
                            {"max_length", "2048"}});
  EXPECT_DOUBLE_EQ(info.gauge.value, 1);
}

// A model has one model_info series at a time: a new version replaces the
// old one's series, an unload removes it; other models are untouched.
TEST(MetricsTest, ModelInfoFollowsVersionsAndUnloads) {
  Metrics metrics;
  metrics.AddModel("demo", TestConfig(), "v1");
  metrics.AddModel("other", TestConfig(), "w1");
  metrics.AddModel("demo", TestConfig(), "v2");
  auto versions = [&metrics] {
    std::map<std::string, std::string> seen;  // model -> version
    const auto all = Collect(metrics);
    const prometheus::MetricFamily* family = FindFamily(all, "attnserve_model_info");
    if (family == nullptr) return seen;
    for (const auto& metric : family->metric) {
      std::map<std::string, std::string> labels;
      for (const auto& label : metric.label) labels[label.name] = label.value;
      EXPECT_FALSE(seen.count(labels["model"])) << "two series for " << labels["model"];
      seen[labels["model"]] = labels["version"];
    }
    return seen;
  };
  EXPECT_EQ(versions(), (std::map<std::string, std::string>{{"demo", "v2"}, {"other", "w1"}}));
  metrics.RemoveModel("demo");
  EXPECT_EQ(versions(), (std::map<std::string, std::string>{{"other", "w1"}}));
  metrics.RemoveModel("demo");  // unknown: nothing happens
  metrics.AddModel("demo", TestConfig(), "v3");
  EXPECT_EQ(versions(), (std::map<std::string, std::string>{{"demo", "v3"}, {"other", "w1"}}));
}

TEST(MetricsTest, LoadFailuresCountedPerModel) {
  Metrics metrics;
  metrics.LoadFailed("a");
  metrics.LoadFailed("a");
  metrics.LoadFailed("b");
  EXPECT_DOUBLE_EQ(
      Series(metrics, "attnserve_model_load_failures_total", {{"model", "a"}}).counter.value, 2);
  EXPECT_DOUBLE_EQ(
      Series(metrics, "attnserve_model_load_failures_total", {{"model", "b"}}).counter.value, 1);
}

TEST(MetricsTest, FamiliesHaveDesignNamesTypesAndHelp) {
  Metrics metrics;
  RecordOneOfEach(metrics);  // a family without series is not collected
  const std::map<std::string, prometheus::MetricType> expected = {
      {"attnserve_requests_total", prometheus::MetricType::Counter},
      {"attnserve_request_duration_seconds", prometheus::MetricType::Histogram},
      {"attnserve_queue_duration_seconds", prometheus::MetricType::Histogram},
      {"attnserve_compute_duration_seconds", prometheus::MetricType::Histogram},
      {"attnserve_batch_size", prometheus::MetricType::Histogram},
      {"attnserve_batch_tokens", prometheus::MetricType::Histogram},
      {"attnserve_tokens_total", prometheus::MetricType::Counter},
      {"attnserve_queue_depth", prometheus::MetricType::Gauge},
      {"attnserve_inflight_requests", prometheus::MetricType::Gauge},
      {"attnserve_model_info", prometheus::MetricType::Gauge},
      {"attnserve_sessions_active", prometheus::MetricType::Gauge},
      {"attnserve_session_cache_bytes", prometheus::MetricType::Gauge}};
  const auto all = Collect(metrics);
  EXPECT_EQ(all.size(), expected.size());
  for (const auto& [name, type] : expected) {
    SCOPED_TRACE(name);
    const prometheus::MetricFamily* family = FindFamily(all, name);
    ASSERT_NE(family, nullptr);
    EXPECT_EQ(family->type, type);
    EXPECT_FALSE(family->help.empty());
  }
}

TEST(MetricsTest, SessionSeries) {
  Metrics metrics;
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_sessions_active", {}).gauge.value, 0);
  metrics.SetSessions(3, 3 << 20);
  metrics.SessionAppended("demo");
  metrics.SessionAppended("demo");
  metrics.SessionEnded("idle");
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_sessions_active", {}).gauge.value, 3);
  EXPECT_DOUBLE_EQ(Series(metrics, "attnserve_session_cache_bytes", {}).gauge.value, 3 << 20);
  EXPECT_DOUBLE_EQ(
      Series(metrics, "attnserve_session_appends_total", {{"model", "demo"}}).counter.value, 2);
  EXPECT_DOUBLE_EQ(
      Series(metrics, "attnserve_sessions_ended_total", {{"reason", "idle"}}).counter.value, 1);
}

TEST(MetricsTest, ServesMetricsOverHttp) {
  Metrics metrics;
  RecordOneOfEach(metrics);
  BurnCpu(0.05);
  const absl::StatusOr<int> port = metrics.StartHttp("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);

  const std::string body = HttpGetBody(*port, "/metrics");
  EXPECT_THAT(body, HasSubstr("attnserve_requests_total{code=\"OK\",model=\"demo\"} 1\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_tokens_total{model=\"demo\"} 128\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_queue_depth{model=\"demo\"} 3\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_inflight_requests 1\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_batch_size_count{model=\"demo\"} 1\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_request_duration_seconds_count{model=\"demo\"} 2\n"));
  EXPECT_THAT(body, HasSubstr("attnserve_model_info{"));

  EXPECT_GT(SampleValue(body, "process_cpu_seconds_total"), 0);
  EXPECT_GT(SampleValue(body, "process_resident_memory_bytes"), 1 << 20);
  const double start = SampleValue(body, "process_start_time_seconds");
  const double now = static_cast<double>(std::time(nullptr));
  // Boot time is whole seconds and the clock may have been stepped since boot.
  EXPECT_GT(start, now - 3600);
  EXPECT_LT(start, now + 5);
}

TEST(MetricsTest, ScrapePassesPromtoolLint) {
  Metrics metrics;
  RecordOneOfEach(metrics);
  const absl::StatusOr<int> port = metrics.StartHttp("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string body = HttpGetBody(*port, "/metrics");
  ASSERT_THAT(body, HasSubstr("process_start_time_seconds"));

  ASSERT_TRUE(HavePromtool()) << kPromtoolHint;
  const CommandResult result = PromtoolCheckMetrics(body);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "") << "promtool reported problems";
}

TEST(MetricsTest, PortInUseIsUnavailable) {
  Metrics first;
  const absl::StatusOr<int> port = first.StartHttp("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();

  Metrics second;
  const std::string address = "127.0.0.1:" + std::to_string(*port);
  const absl::StatusOr<int> again = second.StartHttp(address);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(again.status().message(), HasSubstr(address));
}

TEST(MetricsTest, StartHttpTwiceIsRefused) {
  Metrics metrics;
  ASSERT_TRUE(metrics.StartHttp("127.0.0.1:0").ok());
  EXPECT_EQ(metrics.StartHttp("127.0.0.1:0").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace attnserve::server
