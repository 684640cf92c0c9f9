#include "server/metrics.h"

#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace attnserve::server {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Latencies span a tiny single-head batch (tens of microseconds) to a long
// sequence on a loaded host (seconds).
const Histogram::BucketBoundaries& SecondsBuckets() {
  static const Histogram::BucketBoundaries kBuckets = {
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
      50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0};
  return kBuckets;
}

const Histogram::BucketBoundaries& BatchSizeBuckets() {
  static const Histogram::BucketBoundaries kBuckets = {1,  2,  4,   8,   16,
                                                      32, 64, 128, 256, 512};
  return kBuckets;
}

const Histogram::BucketBoundaries& BatchTokenBuckets() {
  static const Histogram::BucketBoundaries kBuckets = {16,   64,    256,   1024,
                                                      4096, 16384, 65536, 262144};
  return kBuckets;
}

// The fields of /proc/self/stat after the parenthesised command name (which
// may itself contain spaces and parentheses), so element i is field i + 3 of
// proc(5). Empty when the file cannot be read.
std::vector<std::string> ReadProcSelfStatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return {};
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields;
  for (std::string field; rest >> field;) fields.push_back(std::move(field));
  return fields;
}

// proc(5) field numbers, as indices into ReadProcSelfStatFields().
constexpr size_t kUtimeIndex = 14 - 3;
constexpr size_t kStimeIndex = 15 - 3;
constexpr size_t kStarttimeIndex = 22 - 3;

std::optional<double> StatFieldSeconds(const std::vector<std::string>& fields,
                                       size_t index) {
  const long ticks_per_second = sysconf(_SC_CLK_TCK);
  if (index >= fields.size() || ticks_per_second <= 0) return std::nullopt;
  // No exception may escape to civetweb's scrape thread: parse without stod.
  char* end = nullptr;
  const double ticks = std::strtod(fields[index].c_str(), &end);
  if (end == fields[index].c_str() || *end != '\0') return std::nullopt;
  return ticks / static_cast<double>(ticks_per_second);
}

// Unix time of boot: the "btime" line of /proc/stat.
std::optional<double> BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double btime = 0;
      if (in >> btime) return btime;
      return std::nullopt;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return std::nullopt;
}

std::optional<double> ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  double size_pages = 0, resident_pages = 0;
  const long page_bytes = sysconf(_SC_PAGESIZE);
  if (!(in >> size_pages >> resident_pages) || page_bytes <= 0) return std::nullopt;
  return resident_pages * static_cast<double>(page_bytes);
}

prometheus::MetricFamily OneValueFamily(std::string name, std::string help,
                                        prometheus::MetricType type, double value) {
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return {std::move(name), std::move(help), type, {metric}};
}

// The standard process_* series, read from /proc at scrape time. A series
// whose source cannot be read is left out rather than reported as zero.
class ProcessCollector final : public prometheus::Collectable {
 public:
  ProcessCollector() {
    const std::optional<double> boot = BootTimeSeconds();
    const std::optional<double> since_boot =
        StatFieldSeconds(ReadProcSelfStatFields(), kStarttimeIndex);
    if (boot && since_boot) start_time_seconds_ = *boot + *since_boot;
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> families;
    const std::vector<std::string> stat = ReadProcSelfStatFields();
    const std::optional<double> utime = StatFieldSeconds(stat, kUtimeIndex);
    const std::optional<double> stime = StatFieldSeconds(stat, kStimeIndex);
    if (utime && stime) {
      families.push_back(OneValueFamily("process_cpu_seconds_total",
                                        "Total user and system CPU time spent in seconds.",
                                        MetricType::Counter, *utime + *stime));
    }
    if (const std::optional<double> rss = ResidentBytes()) {
      families.push_back(OneValueFamily("process_resident_memory_bytes",
                                        "Resident memory size in bytes.",
                                        MetricType::Gauge, *rss));
    }
    if (start_time_seconds_) {
      families.push_back(OneValueFamily(
          "process_start_time_seconds",
          "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
          *start_time_seconds_));
    }
    return families;
  }

 private:
  std::optional<double> start_time_seconds_;  // constant after construction
};

// A family of type T (Counter, Gauge, Histogram) named `name` in `r`.
template <typename T>
Family<T>& Register(prometheus::detail::Builder<T> builder, prometheus::Registry& r,
                    const char* name, const char* help) {
  return builder.Name(name).Help(help).Register(r);
}

}  // namespace

// Family references stay valid as long as the registry lives (Metrics owns
// it). Family::Add is thread-safe and returns the existing series for known
// labels, so no cache of series is kept here.
struct Metrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(Register(prometheus::BuildCounter(), r, "attnserve_requests_total",
                          "Finished requests by gRPC status code name.")),
        request_duration(
            Register(prometheus::BuildHistogram(), r, "attnserve_request_duration_seconds",
                     "Time from receipt of a request to its reply, in seconds.")),
        queue_duration(
            Register(prometheus::BuildHistogram(), r, "attnserve_queue_duration_seconds",
                     "Time a request waited in the queue for a batch, in seconds.")),
        compute_duration(
            Register(prometheus::BuildHistogram(), r, "attnserve_compute_duration_seconds",
                     "Engine time per batch, in seconds.")),
        batch_size(Register(prometheus::BuildHistogram(), r, "attnserve_batch_size",
                            "Requests per batch.")),
        batch_tokens(Register(prometheus::BuildHistogram(), r, "attnserve_batch_tokens",
                              "Tokens (sequence positions) per batch.")),
        tokens(Register(prometheus::BuildCounter(), r, "attnserve_tokens_total",
                        "Tokens (sequence positions) processed.")),
        queue_depth(Register(prometheus::BuildGauge(), r, "attnserve_queue_depth",
                             "Requests waiting in the queue now.")),
        inflight(Register(prometheus::BuildGauge(), r, "attnserve_inflight_requests",
                          "Requests received and not yet answered.")
                     .Add({})),
        model_info(Register(prometheus::BuildGauge(), r, "attnserve_model_info",
                            "Configuration of each loaded model; the value is always 1.")),
        engine_failures(Register(prometheus::BuildCounter(), r, "attnserve_engine_failures_total",
                                 "Requests the engine failed (out of memory, oneDNN error), "
                                 "by gRPC status code name.")),
        load_failures(Register(prometheus::BuildCounter(), r,
                               "attnserve_model_load_failures_total",
                               "Model loads (at a repository poll or a LoadModel call) that "
                               "failed; the previous version, if any, keeps serving.")),
        sessions_active(Register(prometheus::BuildGauge(), r, "attnserve_sessions_active",
                                 "Streaming sessions open now.")
                            .Add({})),
        session_cache_bytes(
            Register(prometheus::BuildGauge(), r, "attnserve_session_cache_bytes",
                     "Bytes of key and value cache the open sessions reserve "
                     "(each its largest, from its open).")
                .Add({})),
        session_appends(Register(prometheus::BuildCounter(), r, "attnserve_session_appends_total",
                                 "Chunks appended to sessions and answered.")),
        sessions_ended(Register(prometheus::BuildCounter(), r, "attnserve_sessions_ended_total",
                                "Sessions ended, by reason: closed (by the client), idle, "
                                "cancelled (client gone), error, draining.")),
        process(std::make_shared<ProcessCollector>()) {}

  Family<Counter>& requests;
  Family<Histogram>& request_duration;
  Family<Histogram>& queue_duration;
  Family<Histogram>& compute_duration;
  Family<Histogram>& batch_size;
  Family<Histogram>& batch_tokens;
  Family<Counter>& tokens;
  Family<Gauge>& queue_depth;
  Gauge& inflight;
  Family<Gauge>& model_info;
  Family<Counter>& engine_failures;
  Family<Counter>& load_failures;
  Gauge& sessions_active;
  Gauge& session_cache_bytes;
  Family<Counter>& session_appends;
  Family<Counter>& sessions_ended;
  // Registered with the Exposer (which keeps only a weak_ptr), since a
  // prometheus-cpp Registry holds families, not custom collectables.
  std::shared_ptr<ProcessCollector> process;
};

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {}

// The Exposer is destroyed first (declared last): it stops serving before the
// registry and the process collector go away.
Metrics::~Metrics() = default;

absl::StatusOr<int> Metrics::StartHttp(const std::string& address) {
  if (exposer_ != nullptr) {
    return absl::FailedPreconditionError("metrics HTTP server already started");
  }
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(address);
    exposer->RegisterCollectable(registry_);
    exposer->RegisterCollectable(families_->process);
    const std::vector<int> ports = exposer->GetListeningPorts();
    if (ports.empty()) {
      return absl::UnavailableError(
          absl::StrCat("metrics HTTP server on ", address, " has no listening port"));
    }
    exposer_ = std::move(exposer);
    return ports.front();
  } catch (const std::exception& e) {
    // civetweb throws when it cannot bind (port in use, bad address).
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
}

void Metrics::AddModel(const std::string& model, const core::ModelConfig& config,
                       const std::string& version) {
  prometheus::Gauge& gauge =
      families_->model_info
          .Add({{"model", model},
                {"version", version},
                {"precision", std::string(core::ToString(config.precision))},
                {"positional", std::string(core::ToString(config.positional))},
                {"relevance", std::string(core::ToString(config.relevance))},
                {"normalization", std::string(core::ToString(config.normalization))},
                {"projections", config.projections ? "true" : "false"},
                {"d_model", std::to_string(config.d_model)},
                {"num_heads", std::to_string(config.num_heads)},
                {"max_length", std::to_string(config.max_length)}});
  gauge.Set(1);
  prometheus::Gauge* previous = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = model_info_.try_emplace(model, &gauge);
    if (!added && it->second != &gauge) {
      previous = it->second;
      it->second = &gauge;
    }
  }
  if (previous != nullptr) families_->model_info.Remove(previous);
}

void Metrics::RemoveModel(const std::string& model) {
  prometheus::Gauge* gauge = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = model_info_.find(model);
    if (it == model_info_.end()) return;
    gauge = it->second;
    model_info_.erase(it);
  }
  families_->model_info.Remove(gauge);
}

void Metrics::LoadFailed(const std::string& model) {
  families_->load_failures.Add({{"model", model}}).Increment();
}

void Metrics::RequestFinished(const std::string& model, const std::string& code,
                              double seconds) {
  families_->requests.Add({{"model", model}, {"code", code}}).Increment();
  families_->request_duration.Add({{"model", model}}, SecondsBuckets()).Observe(seconds);
}

void Metrics::QueueWait(const std::string& model, double seconds) {
  families_->queue_duration.Add({{"model", model}}, SecondsBuckets()).Observe(seconds);
}

void Metrics::BatchDone(const std::string& model, double compute_seconds,
                        uint32_t batch_size, uint32_t batch_tokens) {
  const prometheus::Labels labels = {{"model", model}};
  families_->compute_duration.Add(labels, SecondsBuckets()).Observe(compute_seconds);
  families_->batch_size.Add(labels, BatchSizeBuckets()).Observe(batch_size);
  families_->batch_tokens.Add(labels, BatchTokenBuckets()).Observe(batch_tokens);
  families_->tokens.Add(labels).Increment(batch_tokens);
}

void Metrics::SetQueueDepth(const std::string& model, double depth) {
  families_->queue_depth.Add({{"model", model}}).Set(depth);
}

void Metrics::EngineFailures(const std::string& model, const std::string& code,
                             double requests) {
  families_->engine_failures.Add({{"model", model}, {"code", code}}).Increment(requests);
}

void Metrics::InflightAdd(double delta) { families_->inflight.Increment(delta); }

void Metrics::SetSessions(double active, double cache_bytes) {
  families_->sessions_active.Set(active);
  families_->session_cache_bytes.Set(cache_bytes);
}

void Metrics::SessionAppended(const std::string& model) {
  families_->session_appends.Add({{"model", model}}).Increment();
}

void Metrics::SessionEnded(const std::string& reason) {
  families_->sessions_ended.Add({{"reason", reason}}).Increment();
}

std::shared_ptr<prometheus::Registry> Metrics::registry() const { return registry_; }

}  // namespace attnserve::server
