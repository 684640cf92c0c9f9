// The load generator behind `attnctl bench` and bench/serve_bench: drives
// Attention.Attend (or KServe v2 ModelInfer, see v2_client.h) over gRPC's callback API (no thread per call, as ghz) in a
// closed loop (a fixed number of calls always in flight) or an open loop (a
// fixed arrival rate), over one or more connections, and reports throughput,
// latency percentiles, status codes and the batch sizes the server reports.
// Requests are serialized once; replies are read only for their Stats and
// the size of their output, so the generator takes as little as it can of
// CPU it may share with the server. RunLoad is thread-compatible (one run at
// a time per call; runs are independent).
#ifndef ATTNSERVE_CLIENT_LOAD_GENERATOR_H_
#define ATTNSERVE_CLIENT_LOAD_GENERATOR_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "client/attention_client.h"

namespace attnserve::client {

struct LoadOptions {
  // Closed loop: calls in flight at all times. Open loop: the most calls in
  // flight; an arrival that finds this many waits for none — it is counted
  // as skipped, so an overloaded server cannot make the generator lie about
  // the rate it offered.
  int concurrency = 16;
  // Stop after this many calls (0: no count bound).
  int64_t total = 0;
  // Stop starting calls after this many seconds (0: no time bound). At least
  // one of total and duration_s must be set.
  double duration_s = 0;
  // > 0: open loop at this many calls per second; 0: closed loop.
  double rps = 0;
  // HTTP/2 connections the calls are spread over (round robin).
  int connections = 1;
  // Per-call deadline.
  int64_t deadline_ms = 30000;
  // Hard bound on the whole run, whatever the other settings: the generator
  // always stops by itself.
  double max_run_s = 3600;
};

// One request of the mix, serialized. Calls take the mix's requests in turn.
struct LoadRequest {
  std::string bytes;       // a serialized v1::AttendRequest (v2: inference.ModelInferRequest)
  bool v2 = false;         // sent to KServe v2 ModelInfer instead of Attention.Attend
  uint32_t tokens = 0;     // its L
  uint32_t output_floats = 0;  // floats a reply's output must hold
};
LoadRequest MakeLoadRequest(const v1::AttendRequest& request, uint32_t d_model);

struct LoadReport {
  uint64_t calls = 0;     // calls made (answered, whatever the code)
  uint64_t ok = 0;        // of them OK with a well-formed reply
  uint64_t skipped = 0;   // open loop: arrivals dropped at max concurrency
  uint64_t malformed = 0; // OK replies without the expected output (counted in codes as "MALFORMED_REPLY")
  std::map<std::string, uint64_t> codes;  // status code name -> calls
  double elapsed_s = 0;   // first call to last reply
  uint64_t ok_tokens = 0; // sum of L over OK calls
  double mean_batch_size = 0;    // of OK replies' Stats.batch_size
  double mean_queue_ms = 0, mean_compute_ms = 0;  // of OK replies' Stats
  // Latency of OK calls in ms (open loop: from the scheduled arrival).
  double p50_ms = 0, p90_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;

  double requests_per_s() const { return elapsed_s > 0 ? ok / elapsed_s : 0; }
  double tokens_per_s() const { return elapsed_s > 0 ? ok_tokens / elapsed_s : 0; }
};

// Runs the load against options.target. INVALID_ARGUMENT for bad options or
// an empty mix; connection failures show up in the report's codes.
absl::StatusOr<LoadReport> RunLoad(const ClientOptions& client, const LoadOptions& options,
                                   const std::vector<LoadRequest>& mix);

// The report as one JSON object (the keys of LoadReport, requests_per_s and
// tokens_per_s added).
std::string ReportJson(const LoadReport& report);
// The report as the human-readable text `attnctl bench` prints.
std::string ReportText(const LoadReport& report);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_LOAD_GENERATOR_H_
