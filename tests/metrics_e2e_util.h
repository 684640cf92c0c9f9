// Helpers shared by the metrics end-to-end tests (e2e_metrics_test.cc,
// e2e_metrics_prometheus_test.cc): a parser of the Prometheus text exposition
// format, and the MetricsE2ETest fixture. The fixture starts an in-process
// AttnServer on 127.0.0.1 with its metrics HTTP endpoint and sends it a known
// mix of OK and failed requests, one at a time so every batch holds exactly
// one request, recording the counts the metrics must show.
#ifndef ATTNSERVE_TESTS_METRICS_E2E_UTIL_H_
#define ATTNSERVE_TESTS_METRICS_E2E_UTIL_H_

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "attnserve/v1/attention.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/e2e_util.h"
#include "tests/http_util.h"
#include "tests/test_util.h"

namespace attnserve::testing::metrics_e2e {

using Labels = std::map<std::string, std::string>;
using ModelCode = std::pair<std::string, std::string>;  // {model label, code name}

inline constexpr auto kRpcTimeout = std::chrono::seconds(10);

// ---------------------------------------------------------------------------
// The text exposition format (0.0.4): "# TYPE name type" and
// "name{label="value",...} value [timestamp]" lines.

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Scrape {
  std::vector<Sample> samples;
  std::map<std::string, std::string> types;  // family name -> counter, gauge, ...
};

// Reads `{k="v",...}` starting at line[*i] == '{'; leaves *i after the '}'.
inline bool ParseLabels(const std::string& line, size_t* i, Labels* labels) {
  ++*i;
  while (*i < line.size() && line[*i] != '}') {
    const size_t eq = line.find('=', *i);
    if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return false;
    const std::string key = line.substr(*i, eq - *i);
    std::string value;
    for (*i = eq + 2; *i < line.size() && line[*i] != '"'; ++*i) {
      char c = line[*i];
      if (c == '\\' && *i + 1 < line.size()) {  // \\, \" and \n
        c = line[++*i];
        if (c == 'n') c = '\n';
      }
      value += c;
    }
    if (*i >= line.size()) return false;  // no closing quote
    ++*i;
    if (*i < line.size() && line[*i] == ',') ++*i;
    (*labels)[key] = value;
  }
  if (*i >= line.size()) return false;  // no closing brace
  ++*i;
  return true;
}

inline std::optional<Sample> ParseSampleLine(const std::string& line) {
  Sample sample;
  size_t i = line.find_first_of("{ ");
  if (i == std::string::npos || i == 0) return std::nullopt;
  sample.name = line.substr(0, i);
  if (line[i] == '{' && !ParseLabels(line, &i, &sample.labels)) return std::nullopt;
  std::istringstream rest(line.substr(i));
  std::string value;
  if (!(rest >> value)) return std::nullopt;
  char* end = nullptr;
  sample.value = std::strtod(value.c_str(), &end);  // also takes +Inf and NaN
  if (end == value.c_str() || *end != '\0') return std::nullopt;
  return sample;
}

inline Scrape ParseExposition(const std::string& text) {
  Scrape scrape;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, keyword, name, type;
      words >> hash >> keyword >> name >> type;
      if (keyword == "TYPE") scrape.types[name] = type;
      continue;
    }
    if (std::optional<Sample> sample = ParseSampleLine(line)) {
      scrape.samples.push_back(*std::move(sample));
    } else {
      ADD_FAILURE() << "malformed exposition line: " << line;
    }
  }
  return scrape;
}

inline std::vector<Sample> SamplesNamed(const Scrape& scrape, const std::string& name) {
  std::vector<Sample> found;
  for (const Sample& s : scrape.samples) {
    if (s.name == name) found.push_back(s);
  }
  return found;
}

// The value of the sample `name` whose labels are exactly `labels`.
inline std::optional<double> Value(const Scrape& scrape, const std::string& name,
                                   const Labels& labels) {
  for (const Sample& s : scrape.samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

// `name`'s samples as model label -> value; fails on any other label.
inline std::map<std::string, double> PerModel(const Scrape& scrape, const std::string& name) {
  std::map<std::string, double> values;
  for (const Sample& s : SamplesNamed(scrape, name)) {
    EXPECT_EQ(s.labels.size(), 1u) << name << " has labels other than model";
    values[s.labels.count("model") ? s.labels.at("model") : "<none>"] = s.value;
  }
  return values;
}

// The whole file at `path` ("" when it cannot be read).
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// ---------------------------------------------------------------------------
// The traffic and the test fixture.

struct RequestSpec {
  std::string model;  // as sent
  uint32_t rows;      // L
  uint32_t cols;      // d_model, or a wrong width
  bool nan;           // poison one value
  grpc::StatusCode code;
  const char* code_name;    // the label DESIGN.md asks for
  const char* model_label;  // the model label the request is counted under
};

// mha_plain: d_model 32, no positional encoding. mha_sinusoidal_sep:
// d_model 64, max_length 64.
inline const std::vector<RequestSpec>& Traffic() {
  using grpc::StatusCode;
  static const std::vector<RequestSpec> kTraffic = [] {
    std::vector<RequestSpec> t;
    for (uint32_t rows : {1u, 2u, 3u, 5u, 8u, 13u, 21u}) {
      t.push_back({"mha_plain", rows, 32, false, StatusCode::OK, "OK", "mha_plain"});
    }
    for (uint32_t rows : {4u, 16u, 64u}) {
      t.push_back({"mha_sinusoidal_sep", rows, 64, false, StatusCode::OK, "OK",
                   "mha_sinusoidal_sep"});
    }
    t.push_back({"mha_plain", 4, 31, false, StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT",
                 "mha_plain"});  // shape mismatch
    t.push_back({"mha_plain", 4, 32, true, StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT",
                 "mha_plain"});  // non-finite value
    t.push_back({"no_such_model", 4, 32, false, StatusCode::NOT_FOUND, "NOT_FOUND", "_unknown"});
    t.push_back({"mha_sinusoidal_sep", 65, 64, false, StatusCode::OUT_OF_RANGE, "OUT_OF_RANGE",
                 "mha_sinusoidal_sep"});
    return t;
  }();
  return kTraffic;
}

class MetricsE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = server::AttnServer::Start(LoopbackOptions(SourcePath("tests/golden/data")));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    const absl::StatusOr<int> port = server_->metrics().StartHttp("127.0.0.1:0");
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
    stub_ = v1::Attention::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
    std::mt19937 rng(7);
    // One at a time: each reply arrives before the next request is sent, so
    // every batch holds exactly one request.
    for (const RequestSpec& spec : Traffic()) ASSERT_NO_FATAL_FAILURE(Send(spec, rng));
  }

  void TearDown() override {
    stub_.reset();
    server_.reset();  // drains
  }

  void Send(const RequestSpec& spec, std::mt19937& rng) {
    SCOPED_TRACE(spec.model + " L=" + std::to_string(spec.rows) + " expecting " +
                 spec.code_name);
    v1::AttendRequest request;
    request.set_model(spec.model);
    v1::Matrix* input = request.mutable_input();
    input->set_rows(spec.rows);
    input->set_cols(spec.cols);
    for (float v : RandomVector(rng, size_t{spec.rows} * spec.cols, 1.0f)) input->add_data(v);
    if (spec.nan) input->set_data(0, std::numeric_limits<float>::quiet_NaN());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::AttendResponse reply;
    const grpc::Status status = stub_->Attend(&context, request, &reply);
    ASSERT_EQ(status.error_code(), spec.code) << status.error_message();
    ++requests_[{spec.model_label, spec.code_name}];
    ++finished_[spec.model_label];
    if (status.ok()) {
      ASSERT_EQ(reply.stats().batch_size(), 1u);
      ASSERT_EQ(reply.stats().batch_tokens(), spec.rows);
      ++ok_[spec.model_label];
      tokens_[spec.model_label] += spec.rows;
    }
  }

  std::string ScrapeText() {
    const std::optional<HttpResponse> r = HttpGet(metrics_port_, "/metrics");
    EXPECT_TRUE(r.has_value()) << "no HTTP reply from the metrics port " << metrics_port_;
    if (!r) return "";
    EXPECT_EQ(r->status, 200) << r->body;
    return r->body;
  }

  Scrape ScrapeNow() { return ParseExposition(ScrapeText()); }

  std::unique_ptr<server::AttnServer> server_;
  int metrics_port_ = 0;
  std::unique_ptr<v1::Attention::Stub> stub_;
  // What the traffic should have produced.
  std::map<ModelCode, double> requests_;     // attnserve_requests_total
  std::map<std::string, double> finished_;   // finished requests per model label
  std::map<std::string, double> ok_;         // OK requests (= batches) per model
  std::map<std::string, double> tokens_;     // sum of L of the OK requests per model
};

}  // namespace attnserve::testing::metrics_e2e

#endif  // ATTNSERVE_TESTS_METRICS_E2E_UTIL_H_
