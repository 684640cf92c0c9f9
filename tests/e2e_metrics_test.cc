// End-to-end test of the Prometheus metrics (DESIGN.md, "Metrics") as one
// scrape shows them. The MetricsE2ETest fixture (tests/metrics_e2e_util.h)
// has an in-process AttnServer on 127.0.0.1 answer a known mix of OK and
// failed requests, sent one at a time so every batch holds exactly one
// request; then a scrape of GET /metrics shows exactly those counts, the
// families DESIGN.md names with their types, histograms consistent with the
// replies, gauges at rest, the model info and process metrics, and the scrape
// passes `promtool check metrics`. A real Prometheus server scraping attnserve
// is in e2e_metrics_prometheus_test.cc.
//
// Network only on 127.0.0.1; every wait is bounded.

#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/http_util.h"
#include "tests/metrics_e2e_util.h"
#include "tests/test_util.h"

namespace attnserve::testing::metrics_e2e {
namespace {

TEST_F(MetricsE2ETest, FamiliesHaveDesignNamesAndTypes) {
  const Scrape scrape = ScrapeNow();
  const std::map<std::string, std::string> expected = {
      {"attnserve_requests_total", "counter"},
      {"attnserve_request_duration_seconds", "histogram"},
      {"attnserve_queue_duration_seconds", "histogram"},
      {"attnserve_compute_duration_seconds", "histogram"},
      {"attnserve_batch_size", "histogram"},
      {"attnserve_batch_tokens", "histogram"},
      {"attnserve_tokens_total", "counter"},
      {"attnserve_queue_depth", "gauge"},
      {"attnserve_inflight_requests", "gauge"},
      {"attnserve_model_info", "gauge"},
      {"process_cpu_seconds_total", "counter"},
      {"process_resident_memory_bytes", "gauge"},
      {"process_start_time_seconds", "gauge"}};
  for (const auto& [name, type] : expected) {
    EXPECT_EQ(scrape.types.count(name) ? scrape.types.at(name) : "<missing>", type) << name;
  }
}

TEST_F(MetricsE2ETest, RequestsTotalCountsEveryFinishedRequestByModelAndCode) {
  std::map<ModelCode, double> seen;
  for (const Sample& s : SamplesNamed(ScrapeNow(), "attnserve_requests_total")) {
    EXPECT_EQ(s.labels.size(), 2u);
    seen[{s.labels.count("model") ? s.labels.at("model") : "<none>",
          s.labels.count("code") ? s.labels.at("code") : "<none>"}] = s.value;
  }
  // Exactly these series: 7 + 2 for mha_plain, 3 + 1 for mha_sinusoidal_sep,
  // and the unknown model under "_unknown".
  const std::map<ModelCode, double> expected = {{{"mha_plain", "OK"}, 7},
                                                {{"mha_plain", "INVALID_ARGUMENT"}, 2},
                                                {{"mha_sinusoidal_sep", "OK"}, 3},
                                                {{"mha_sinusoidal_sep", "OUT_OF_RANGE"}, 1},
                                                {{"_unknown", "NOT_FOUND"}, 1}};
  EXPECT_EQ(requests_, expected);  // the traffic table agrees with the numbers above
  EXPECT_EQ(seen, expected);
}

TEST_F(MetricsE2ETest, DurationHistogramsCountRequestsAndBatches) {
  const Scrape scrape = ScrapeNow();
  // Receipt to reply: every finished request, failed ones included.
  EXPECT_EQ(PerModel(scrape, "attnserve_request_duration_seconds_count"), finished_);
  for (const auto& [model, count] : finished_) {
    SCOPED_TRACE(model);
    EXPECT_EQ(Value(scrape, "attnserve_request_duration_seconds_bucket",
                    {{"model", model}, {"le", "+Inf"}}),
              count);
    EXPECT_GT(
        Value(scrape, "attnserve_request_duration_seconds_sum", {{"model", model}}).value_or(-1),
        0);
  }
  // Queue wait per computed request; engine time per batch (one request each).
  EXPECT_EQ(PerModel(scrape, "attnserve_queue_duration_seconds_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_compute_duration_seconds_count"), ok_);
}

TEST_F(MetricsE2ETest, TokenAndBatchSeriesMatchTheReplies) {
  const Scrape scrape = ScrapeNow();
  EXPECT_EQ(tokens_, (std::map<std::string, double>{{"mha_plain", 53},
                                                    {"mha_sinusoidal_sep", 84}}));
  EXPECT_EQ(PerModel(scrape, "attnserve_tokens_total"), tokens_);
  // Every reply said batch_size 1 and batch_tokens L (checked in Send).
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_size_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_size_sum"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_tokens_count"), ok_);
  EXPECT_EQ(PerModel(scrape, "attnserve_batch_tokens_sum"), tokens_);
  for (const auto& [model, batches] : ok_) {
    EXPECT_EQ(Value(scrape, "attnserve_batch_size_bucket", {{"model", model}, {"le", "1"}}),
              batches)
        << model;
  }
}

TEST_F(MetricsE2ETest, GaugesAreZeroAtRest) {
  const Scrape scrape = ScrapeNow();
  EXPECT_EQ(Value(scrape, "attnserve_inflight_requests", {}), 0);
  const std::map<std::string, double> depth = PerModel(scrape, "attnserve_queue_depth");
  for (const auto& [model, batches] : ok_) EXPECT_EQ(depth.count(model), 1u) << model;
  for (const auto& [model, value] : depth) EXPECT_EQ(value, 0) << model;
}

TEST_F(MetricsE2ETest, ModelInfoHasOneSeriesPerModelWithItsConfig) {
  std::vector<Labels> expected;
  for (const auto& dir : std::filesystem::directory_iterator(SourcePath("tests/golden/data"))) {
    const nlohmann::json c = nlohmann::json::parse(ReadFile((dir.path() / "config.json").string()));
    expected.push_back({{"model", dir.path().filename().string()},
                        {"version", server::ModelVersion(dir.path().string())},
                        {"precision", c.at("precision").get<std::string>()},
                        {"positional", c.at("positional").get<std::string>()},
                        {"relevance", c.at("relevance").get<std::string>()},
                        {"normalization", c.at("normalization").get<std::string>()},
                        {"projections", c.at("projections").get<bool>() ? "true" : "false"},
                        {"d_model", std::to_string(c.at("d_model").get<int>())},
                        {"num_heads", std::to_string(c.at("num_heads").get<int>())},
                        {"max_length", std::to_string(c.at("max_length").get<int>())}});
  }
  ASSERT_EQ(expected.size(), 4u);
  const Scrape scrape = ScrapeNow();
  const std::vector<Sample> info = SamplesNamed(scrape, "attnserve_model_info");
  EXPECT_EQ(info.size(), expected.size());
  for (const Labels& labels : expected) {
    EXPECT_EQ(Value(scrape, "attnserve_model_info", labels), 1) << labels.at("model");
  }
}

TEST_F(MetricsE2ETest, ProcessMetricsArePlausible) {
  // Enough CPU that the tick-granular (10 ms) counter is certainly positive.
  while (std::clock() < CLOCKS_PER_SEC / 20) {
  }
  const Scrape scrape = ScrapeNow();
  const double cpu_now = static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
  const double now = static_cast<double>(std::time(nullptr));

  const std::optional<double> cpu = Value(scrape, "process_cpu_seconds_total", {});
  ASSERT_TRUE(cpu.has_value());
  EXPECT_GT(*cpu, 0);
  EXPECT_LE(*cpu, cpu_now + 0.1);  // tick accounting may round up a little

  const std::optional<double> rss = Value(scrape, "process_resident_memory_bytes", {});
  ASSERT_TRUE(rss.has_value());
  EXPECT_GT(*rss, 1 << 20);
  EXPECT_LT(*rss, static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));

  const std::optional<double> start = Value(scrape, "process_start_time_seconds", {});
  ASSERT_TRUE(start.has_value());
  EXPECT_GT(*start, now - 3600);
  EXPECT_LE(*start, now + 2);  // boot time is whole seconds
}

TEST_F(MetricsE2ETest, ScrapePassesPromtoolLint) {
  const std::string text = ScrapeText();
  ASSERT_THAT(text, ::testing::HasSubstr("attnserve_requests_total"));
  ASSERT_TRUE(HavePromtool()) << kPromtoolHint;
  const CommandResult result = PromtoolCheckMetrics(text);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  const std::string& output = result.output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

}  // namespace
}  // namespace attnserve::testing::metrics_e2e
