#include "client/load_generator.h"
#include "client/v2_client.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <atomic>
#include <mutex>
#include <thread>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attnserve::client {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kAttendMethod[] = "/attnserve.v1.Attention/Attend";

// What is read of a reply: its Stats and the size of its output matrix. The
// output itself is skipped without a copy.
struct ReplySummary {
  v1::Stats stats;
  uint32_t output_floats = 0;
};

bool ScanMatrixRowsCols(google::protobuf::io::CodedInputStream& in, uint32_t size,
                        uint32_t* floats) {
  using google::protobuf::internal::WireFormatLite;
  const auto limit = in.PushLimit(static_cast<int>(size));
  uint64_t rows = 0, cols = 0;
  for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    if (field == v1::Matrix::kRowsFieldNumber || field == v1::Matrix::kColsFieldNumber) {
      uint32_t value = 0;
      if (!in.ReadVarint32(&value)) return false;
      (field == v1::Matrix::kRowsFieldNumber ? rows : cols) = value;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  in.PopLimit(limit);
  *floats = static_cast<uint32_t>(std::min<uint64_t>(rows * cols, UINT32_MAX));
  return true;
}

bool ScanReply(grpc::ByteBuffer* reply, ReplySummary* summary) {
  using google::protobuf::internal::WireFormatLite;
  grpc::ProtoBufferReader reader(reply);
  google::protobuf::io::CodedInputStream in(&reader);
  for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool delimited =
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    uint32_t size = 0;
    if (delimited && field == v1::AttendResponse::kStatsFieldNumber) {
      if (!in.ReadVarint32(&size)) return false;
      const auto limit = in.PushLimit(static_cast<int>(size));
      if (!summary->stats.MergePartialFromCodedStream(&in)) return false;
      in.PopLimit(limit);
    } else if (delimited && field == v1::AttendResponse::kOutputFieldNumber) {
      if (!in.ReadVarint32(&size) || !ScanMatrixRowsCols(in, size, &summary->output_floats)) {
        return false;
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  return in.ConsumedEntireMessage();
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(p * sorted.size()))];
}

absl::Status Validate(const LoadOptions& o, const std::vector<LoadRequest>& mix) {
  if (mix.empty()) return absl::InvalidArgumentError("the request mix is empty");
  if (o.concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("concurrency must be positive; was ", o.concurrency));
  }
  if (o.connections < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("connections must be positive; was ", o.connections));
  }
  if (o.total < 0 || o.duration_s < 0 || o.rps < 0 || o.max_run_s <= 0) {
    return absl::InvalidArgumentError(
        "total, duration and rps must be >= 0 and the run bound positive");
  }
  if (o.total == 0 && o.duration_s == 0) {
    return absl::InvalidArgumentError(
        "give a count (total) or a duration: a load run must stop by itself");
  }
  if (o.deadline_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("deadline_ms must be positive; was ", o.deadline_ms));
  }
  return absl::OkStatus();
}

// One run: slots of calls in flight, results gathered under one mutex (a call
// takes hundreds of microseconds; the lock, nanoseconds).
class Run {
 public:
  Run(const ClientOptions& client, const LoadOptions& options,
      const std::vector<LoadRequest>& mix, std::vector<std::unique_ptr<grpc::GenericStub>> stubs)
      : client_(client),
        options_(options),
        stubs_(std::move(stubs)),
        mix_(mix),
        slots_(options.concurrency) {
    for (const LoadRequest& r : mix) {
      grpc::Slice slice(r.bytes.data(), r.bytes.size(), grpc::Slice::STATIC_SLICE);
      requests_.emplace_back(&slice, 1);
    }
  }

  LoadReport Go() {
    start_ = Clock::now();
    const double bound_s = options_.duration_s > 0
                               ? std::min(options_.duration_s, options_.max_run_s)
                               : options_.max_run_s;
    stop_ = start_ + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(bound_s));
    if (options_.rps > 0) {
      OpenLoop();
    } else {
      {
        std::lock_guard<std::mutex> lock(mu_);
        in_flight_ = static_cast<int>(slots_.size());  // each slot retires once
      }
      for (size_t i = 0; i < slots_.size(); ++i) Next(i);
    }
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
    return Report();
  }

 private:
  struct Slot {  // one call at a time
    std::unique_ptr<grpc::ClientContext> context;
    grpc::ByteBuffer reply;
    Clock::time_point sent;
    size_t request = 0;
  };

  // Claims the next call of the budget: false when the count or time is up.
  bool Claim(Clock::time_point now, size_t* index) {
    if (now >= stop_) return false;
    const int64_t n = issued_.fetch_add(1);
    if (options_.total > 0 && n >= options_.total) return false;
    *index = static_cast<size_t>(n);
    return true;
  }

  void Start(size_t slot_index, size_t call_index, Clock::time_point scheduled) {
    Slot& slot = slots_[slot_index];
    slot.request = call_index % requests_.size();
    slot.context = std::make_unique<grpc::ClientContext>();
    slot.context->set_deadline(std::chrono::system_clock::now() +
                               std::chrono::milliseconds(options_.deadline_ms));
    AddCallMetadata(client_, slot.context.get());
    slot.reply.Clear();
    slot.sent = scheduled;
    stubs_[call_index % stubs_.size()]->UnaryCall(
        slot.context.get(), mix_[slot.request].v2 ? kModelInferMethod : kAttendMethod,
        grpc::StubOptions(), &requests_[slot.request],
        &slot.reply, [this, slot_index](grpc::Status status) { Done(slot_index, status); });
  }

  // Closed loop: the slot's next call, or the slot retires.
  void Next(size_t slot_index) {
    const Clock::time_point now = Clock::now();
    size_t call_index = 0;
    if (Claim(now, &call_index)) return Start(slot_index, call_index, now);
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_flight_ == 0) idle_.notify_all();
  }

  void OpenLoop() {
    const auto period = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(1.0 / options_.rps));
    std::vector<size_t> free_slots(slots_.size());
    for (size_t i = 0; i < free_slots.size(); ++i) free_slots[i] = free_slots.size() - 1 - i;
    free_slots_ = std::move(free_slots);
    for (int64_t k = 0;; ++k) {
      const Clock::time_point arrival = start_ + k * period;
      std::this_thread::sleep_until(arrival);
      size_t call_index = 0;
      if (!Claim(arrival, &call_index)) break;
      size_t slot_index = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (free_slots_.empty()) {
          ++report_.skipped;
          continue;
        }
        slot_index = free_slots_.back();
        free_slots_.pop_back();
        ++in_flight_;
      }
      Start(slot_index, call_index, arrival);
    }
  }

  void Done(size_t slot_index, const grpc::Status& status) {
    Slot& slot = slots_[slot_index];
    const Clock::time_point now = Clock::now();
    ReplySummary summary;
    const LoadRequest& request = mix_[slot.request];
    const bool scanned =
        request.v2 ? ScanModelInferReply(&slot.reply, &summary.stats, &summary.output_floats)
                   : ScanReply(&slot.reply, &summary);
    const bool well_formed = status.ok() && scanned &&
                             summary.output_floats == request.output_floats;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++report_.calls;
      last_reply_ = std::max(last_reply_, now);
      if (well_formed) {
        ++report_.ok;
        ++report_.codes["OK"];
        report_.ok_tokens += request.tokens;
        latencies_ms_.push_back(std::chrono::duration<double, std::milli>(now - slot.sent).count());
        batch_sum_ += summary.stats.batch_size();
        queue_us_sum_ += summary.stats.queue_us();
        compute_us_sum_ += summary.stats.compute_us();
      } else if (status.ok()) {
        ++report_.malformed;
        ++report_.codes["MALFORMED_REPLY"];
      } else {
        ++report_.codes[absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))];
      }
    }
    if (options_.rps > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      free_slots_.push_back(slot_index);
      if (--in_flight_ == 0) idle_.notify_all();
    } else {
      Next(slot_index);
    }
  }

  LoadReport Report() {  // REQUIRES: mu_ held, nothing in flight
    LoadReport r = report_;
    r.elapsed_s = r.calls > 0 ? std::chrono::duration<double>(last_reply_ - start_).count() : 0;
    std::sort(latencies_ms_.begin(), latencies_ms_.end());
    if (!latencies_ms_.empty()) {
      const double n = static_cast<double>(latencies_ms_.size());
      r.p50_ms = Percentile(latencies_ms_, 0.50);
      r.p90_ms = Percentile(latencies_ms_, 0.90);
      r.p95_ms = Percentile(latencies_ms_, 0.95);
      r.p99_ms = Percentile(latencies_ms_, 0.99);
      r.max_ms = latencies_ms_.back();
      double sum = 0;
      for (double v : latencies_ms_) sum += v;
      r.mean_ms = sum / n;
      r.mean_batch_size = batch_sum_ / n;
      r.mean_queue_ms = queue_us_sum_ / n / 1e3;
      r.mean_compute_ms = compute_us_sum_ / n / 1e3;
    }
    return r;
  }

  // Constant after construction.
  const ClientOptions& client_;  // outlives the run (RunLoad's argument)
  const LoadOptions options_;
  const std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  const std::vector<LoadRequest>& mix_;
  std::vector<grpc::ByteBuffer> requests_;  // refer to mix_[i].bytes
  Clock::time_point start_, stop_;

  std::vector<Slot> slots_;  // slot i is touched by one call at a time
  std::atomic<int64_t> issued_{0};

  std::mutex mu_;
  std::condition_variable idle_;       // in_flight_ reached 0
  int in_flight_ = 0;                  // guarded by mu_
  std::vector<size_t> free_slots_;     // guarded by mu_ (open loop)
  LoadReport report_;                  // guarded by mu_
  std::vector<double> latencies_ms_;   // guarded by mu_
  double batch_sum_ = 0, queue_us_sum_ = 0, compute_us_sum_ = 0;  // guarded by mu_
  Clock::time_point last_reply_;       // guarded by mu_
};

}  // namespace

LoadRequest MakeLoadRequest(const v1::AttendRequest& request, uint32_t d_model) {
  LoadRequest r;
  r.bytes = request.SerializeAsString();
  r.tokens = request.input().rows();
  r.output_floats = (request.pooling() == v1::POOLING_NONE ? r.tokens : 1) * d_model;
  return r;
}

absl::StatusOr<LoadReport> RunLoad(const ClientOptions& client, const LoadOptions& options,
                                   const std::vector<LoadRequest>& mix) {
  if (absl::Status s = Validate(options, mix); !s.ok()) return s;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int c = 0; c < options.connections; ++c) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(client, c + 1);
    if (!channel.ok()) return channel.status();
    stubs.push_back(std::make_unique<grpc::GenericStub>(*std::move(channel)));
  }
  Run run(client, options, mix, std::move(stubs));
  return run.Go();
}

std::string ReportJson(const LoadReport& r) {
  std::string codes;
  for (const auto& [name, count] : r.codes) {
    absl::StrAppend(&codes, codes.empty() ? "" : ", ", "\"", name, "\": ", count);
  }
  return absl::StrFormat(
      "{\"calls\": %d, \"ok\": %d, \"skipped\": %d, \"malformed\": %d, \"codes\": {%s}, "
      "\"elapsed_s\": %.6f, \"requests_per_s\": %.3f, \"tokens_per_s\": %.3f, "
      "\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p95\": %.3f, \"p99\": %.3f, "
      "\"max\": %.3f, \"mean\": %.3f}, \"mean_batch_size\": %.3f, \"mean_queue_ms\": %.3f, "
      "\"mean_compute_ms\": %.3f}",
      r.calls, r.ok, r.skipped, r.malformed, codes, r.elapsed_s, r.requests_per_s(),
      r.tokens_per_s(), r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms, r.mean_ms,
      r.mean_batch_size, r.mean_queue_ms, r.mean_compute_ms);
}

std::string ReportText(const LoadReport& r) {
  std::string out = absl::StrFormat(
      "calls:        %d in %.2f s (%d OK%s)\n"
      "throughput:   %.1f requests/s, %.0f tokens/s\n"
      "latency (ms): p50 %.2f  p90 %.2f  p95 %.2f  p99 %.2f  max %.2f  mean %.2f\n"
      "server:       mean batch size %.1f, mean queue %.2f ms, mean compute %.2f ms\n"
      "status codes:\n",
      r.calls, r.elapsed_s, r.ok,
      r.skipped > 0 ? absl::StrCat(", ", r.skipped, " arrivals skipped at max concurrency") : "",
      r.requests_per_s(), r.tokens_per_s(), r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms,
      r.mean_ms, r.mean_batch_size, r.mean_queue_ms, r.mean_compute_ms);
  for (const auto& [name, count] : r.codes) {
    absl::StrAppendFormat(&out, "  %-20s %d\n", name, count);
  }
  return out;
}

}  // namespace attnserve::client
