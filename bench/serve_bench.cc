// serve_bench: what the server costs beside the engine. By default (`make
// bench-serve`) it prints the serving-overhead report of
// bench/serve_bench_overhead.h: the attnserve binary on 127.0.0.1 (a free
// port) on the demo model, driven closed-loop over gRPC at each concurrency
// with L=128 requests, against the engine alone in this process; where a
// lone request's time goes; the reply path on long sequences; and the
// targets with PASS/FAIL. Bounded: each level runs for --seconds and stops by
// itself.
//
//   build/bench/serve_bench [--seconds 5] [--concurrency 1,16,64] [--length 128]
//                           [--max-queue-delay-us US] [--no-long] [--server-binary PATH]
//
// With --tls and/or --token it prints instead what transport security and
// bearer tokens cost (bench/serve_bench_tls.h): plaintext against TLS,
// TLS + token and mTLS + token servers in the same run, at concurrency 1
// and 64, with the targets.
//
// With --protocol v2 it prints what the KServe v2 protocol costs
// (bench/serve_bench_v2.h): v1 Attend against v2 ModelInfer with FP32 and
// BF16 raw input, at L = 128 and 512 (--lengths) and concurrency 1 and 64.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attnserve/v1/attention.grpc.pb.h"
#include "bench/serve_bench_overhead.h"
#include "bench/serve_bench_tls.h"
#include "bench/serve_bench_v2.h"
#include "bench/serve_process.h"
#include "client/load_generator.h"
#include "core/onednn_engine.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = attnserve::v1;
using attnserve::bench::LevelResult;
using attnserve::bench::MakeRequest;
using attnserve::bench::OwnCpuSeconds;
using attnserve::bench::ParseIntList;
using attnserve::bench::Percentile;
using attnserve::bench::RunLevel;
using attnserve::bench::ServerProcess;

// The load generator's options for a plaintext `target`.
attnserve::client::ClientOptions Plaintext(const std::string& target) {
  attnserve::client::ClientOptions client;
  client.target = target;
  return client;
}

// --target HOST:PORT: only the load, against a server running elsewhere
// (e.g. the attnserve binary, so its CPU time can be read from /proc).
int LoadExternal(const std::string& target, const std::vector<int>& levels, double seconds,
                 uint32_t length) {
  auto stub = v1::Attention::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse models;
  grpc::Status s = stub->ListModels(&ctx, {}, &models);
  uint32_t d_model = 0;
  for (const auto& m : models.models()) {
    if (m.is_default()) d_model = m.d_model();
  }
  if (!s.ok() || d_model == 0) {
    std::fprintf(stderr, "cannot list models at %s: %s\n", target.c_str(), s.error_message().c_str());
    return 1;
  }
  const v1::AttendRequest request = MakeRequest(length, d_model);
  std::printf("| target | concurrency | requests/s | p50 ms | p99 ms | mean batch | errors |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int c : levels) {
    LevelResult r = RunLevel(Plaintext(target), c, seconds, request);
    std::printf("| %s | %d | %.1f | %.2f | %.2f | %.1f | %llu |\n", target.c_str(), c,
                r.requests_per_s, r.p50_ms, r.p99_ms, r.mean_batch,
                static_cast<unsigned long long>(r.errors));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5;
  uint32_t length = 128;
  std::vector<int> levels = {1, 16, 64};
  bool levels_given = false;
  int64_t delay_us = -1;  // -1: the server's default
  std::string target;     // set: load an external server instead (no offline figures)
  std::string binary = ATTNSERVE_BINARY;  // the server to start
  attnserve::bench::TlsBenchOptions security;  // --tls / --token: the security table
  attnserve::bench::V2BenchOptions protocol;   // --protocol v2: the v1 / v2 table
  bool compare_v2 = false;
  bool long_sequences = true;  // the report's L = 2048 part
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--tls") security.tls = true;
    else if (flag == "--token") security.token = true;
    else if (flag == "--seconds" && has_value) seconds = std::stod(argv[++i]);
    else if (flag == "--length" && has_value) length = std::stoul(argv[++i]);
    else if (flag == "--concurrency" && has_value) levels = ParseIntList(argv[++i]), levels_given = true;
    else if (flag == "--max-queue-delay-us" && has_value) delay_us = std::stoll(argv[++i]);
    else if (flag == "--rounds" && has_value) security.rounds = protocol.rounds = std::stoi(argv[++i]);
    else if (flag == "--protocol" && has_value && std::string(argv[i + 1]) == "v2") compare_v2 = true, ++i;
    else if (flag == "--lengths" && has_value) {
      protocol.lengths.clear();
      for (int v : ParseIntList(argv[++i])) protocol.lengths.push_back(static_cast<uint32_t>(v));
    }
    else if (flag == "--target" && has_value) target = argv[++i];
    else if (flag == "--server-binary" && has_value) binary = argv[++i];
    else if (flag == "--no-long") long_sequences = false;
    else {
      std::fprintf(stderr, "usage: serve_bench [--seconds S] [--length L] [--concurrency 1,16,64] "
                           "[--max-queue-delay-us US] [--no-long] [--target HOST:PORT] "
                           "[--server-binary PATH]\n"
                           "       serve_bench --tls [--token] [--rounds N] [--seconds S] "
                           "[--length L] [--concurrency 1,64]\n"
                           "       serve_bench --protocol v2 [--rounds N] [--seconds S] "
                           "[--lengths 128,512] [--concurrency 1,64]\n");
      return 2;
    }
  }
  if (compare_v2) {
    protocol.seconds = seconds;
    if (levels_given) protocol.levels = levels;
    protocol.server_binary = binary;
    return attnserve::bench::RunV2Comparison(protocol);
  }
  if (security.tls || security.token) {
    security.seconds = seconds;
    security.length = length;
    security.levels = levels_given ? levels : std::vector<int>{1, 64};
    security.server_binary = binary;
    return attnserve::bench::RunTlsComparison(security);
  }
  if (!target.empty()) return LoadExternal(target, levels, seconds, length);
  attnserve::bench::OverheadOptions overhead;
  overhead.seconds = seconds;
  overhead.length = length;
  overhead.levels = levels;
  overhead.max_queue_delay_us = delay_us;
  overhead.long_sequences = long_sequences;
  overhead.server_binary = binary;
  return attnserve::bench::RunOverheadReport(overhead);
}
