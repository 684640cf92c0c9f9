// serve_bench's default report (`make bench-serve`): what the server costs
// beside the engine, measured in one run on this machine, with the targets
// of the serving-overhead work and PASS/FAIL for each.
//
// 1. The load table: the attnserve binary on the demo model (L = 128),
//    closed loop over loopback at each concurrency, at --max-batch-size 64
//    and 1: requests/s, p50/p99, mean batch, the server's and the load
//    generator's CPU per request, the engine alone on batches of the same
//    size (this process), and their ratios.
// 2. Concurrency 1, where a request's time goes (means over the level's
//    calls, so the parts add up): gRPC alone (the same request and reply
//    bytes through an in-process server that answers at once), the queue
//    (Stats.queue_us), the engine inside the server (Stats.compute_us) split
//    into the engine offline and what the server adds to it (wake-ups, cold
//    caches), and the rest (parse, validation, hand-off, reply).
// 3. Long sequences (L = 2048, d = 1024, weights none and mean), the same
//    split through a server on a model written for the run: what the server
//    adds beside the engine and gRPC (parse, validation, building and
//    handing over the reply) against the engine time; and the reply
//    building alone in this process (server/reply.h) against protobuf's
//    copy-and-serialize way of making the same bytes.
// 4. The targets, each with its measured figure, its bound and PASS/FAIL.
//    The engine-alone references of the bounds (the c = 1 request; batches
//    of 32) are the median of three measurements: before, between and after
//    the servers' levels. CPU per request offline is the process's measured
//    CPU time over the sequences computed.
//
// Not thread-safe: one benchmark thread runs it.
#ifndef ATTNSERVE_BENCH_SERVE_BENCH_OVERHEAD_H_
#define ATTNSERVE_BENCH_SERVE_BENCH_OVERHEAD_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attnserve::bench {

struct OverheadOptions {
  double seconds = 5;                      // per load level
  uint32_t length = 128;                   // L of the load's requests (demo model)
  std::vector<int> levels = {1, 16, 64};   // concurrencies; 1 and 64 carry the targets
  int64_t max_queue_delay_us = -1;         // -1: the server's default
  bool long_sequences = true;              // part 3 (about 40 s)
  std::string server_binary;               // the attnserve binary to start
};

// Prints the report on stdout. Returns 0 when it ran (whatever the targets
// say), 1 when a server or the engine could not start or calls failed.
int RunOverheadReport(const OverheadOptions& options);

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_SERVE_BENCH_OVERHEAD_H_
