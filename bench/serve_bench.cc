// serve_bench: how much of the engine's offline throughput the server keeps
// under load. Starts the attnserve binary on 127.0.0.1 (a free port) on the
// demo model, drives it closed-loop over gRPC at each concurrency with L=128
// requests, and prints requests/s, p50/p99 latency, the mean batch size from
// the replies' Stats and the server process's CPU time per request; then, in
// the same run, the engine's offline throughput for the same batch
// composition (batches of that mean size, back to back, in this process) and
// two ratios: serving / offline (end to end, the load generator sharing the
// machine's cores) and server efficiency (the engine's CPU per request over
// the server's: what the server keeps of the engine when the load comes from
// elsewhere). Repeated with --max-batch-size 1 to show what batching gains.
// Bounded: each level runs for --seconds and stops by itself.
//
//   build/bench/serve_bench [--seconds 5] [--concurrency 1,16,64] [--length 128]
//                           [--max-queue-delay-us US] [--server-binary PATH]
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
using attnserve::bench::Percentile;
using attnserve::bench::RunLevel;
using attnserve::bench::ServerProcess;

// The load generator's options for a plaintext `target`.
attnserve::client::ClientOptions Plaintext(const std::string& target) {
  attnserve::client::ClientOptions client;
  client.target = target;
  return client;
}

// The engine alone on batches of `batch` sequences of `length`: sequences/s.
double OfflineThroughput(attnserve::core::Engine& engine, int batch, uint32_t length,
                         double seconds) {
  const uint32_t d = engine.model().config.d_model;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> data(size_t(batch) * length * d);
  for (float& x : data) x = u(rng);
  std::vector<attnserve::core::SequenceInput> seqs(batch);
  for (int b = 0; b < batch; ++b) {
    seqs[b].data = std::span<const float>(data).subspan(size_t(b) * length * d, length * d);
    seqs[b].length = length;
  }
  std::vector<double> per_batch;
  const auto stop = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < stop || per_batch.size() < 5) {
    const auto t0 = Clock::now();
    auto out = engine.Run(seqs);
    per_batch.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (!out.ok()) return 0;
  }
  return batch / Percentile(per_batch, 0.5);  // median batch time
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

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoi(s.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
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
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--tls") security.tls = true;
    else if (flag == "--token") security.token = true;
    else if (flag == "--seconds" && has_value) seconds = std::stod(argv[++i]);
    else if (flag == "--length" && has_value) length = std::stoul(argv[++i]);
    else if (flag == "--concurrency" && has_value) levels = ParseList(argv[++i]), levels_given = true;
    else if (flag == "--max-queue-delay-us" && has_value) delay_us = std::stoll(argv[++i]);
    else if (flag == "--rounds" && has_value) security.rounds = protocol.rounds = std::stoi(argv[++i]);
    else if (flag == "--protocol" && has_value && std::string(argv[i + 1]) == "v2") compare_v2 = true, ++i;
    else if (flag == "--lengths" && has_value) {
      protocol.lengths.clear();
      for (int v : ParseList(argv[++i])) protocol.lengths.push_back(static_cast<uint32_t>(v));
    }
    else if (flag == "--target" && has_value) target = argv[++i];
    else if (flag == "--server-binary" && has_value) binary = argv[++i];
    else {
      std::fprintf(stderr, "usage: serve_bench [--seconds S] [--length L] [--concurrency 1,16,64] "
                           "[--max-queue-delay-us US] [--target HOST:PORT] [--server-binary PATH]\n"
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
  auto model = attnserve::core::LoadModel(std::string(ATTNSERVE_SOURCE_DIR) + "/models/demo");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  auto engine = attnserve::core::OneDnnEngine::Create(
      std::make_shared<const attnserve::core::Model>(*std::move(model)));
  if (!engine.ok()) return 1;
  const v1::AttendRequest request = MakeRequest(length, (*engine)->model().config.d_model);
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("| server | concurrency | requests/s | p50 ms | p99 ms | mean batch | server CPU ms/req "
              "| load generator CPU ms/req | offline req/s | serving / offline | server efficiency "
              "| errors |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t max_batch : {64u, 1u}) {
    std::vector<std::string> flags = {"--max-batch-size", std::to_string(max_batch)};
    if (delay_us >= 0) {
      flags.insert(flags.end(), {"--max-queue-delay-us", std::to_string(delay_us)});
    }
    ServerProcess server(binary, flags);
    if (!server.ok()) {
      std::fprintf(stderr, "cannot start %s\n", binary.c_str());
      return 1;
    }
    for (int c : levels) {
      const double cpu0 = server.CpuSeconds(), own_cpu0 = OwnCpuSeconds();
      LevelResult r = RunLevel(server.client(), c, seconds, request);
      const double answered = std::max(1.0, r.requests_per_s * r.elapsed_s);
      const double cpu_ms_per_request = 1e3 * (server.CpuSeconds() - cpu0) / answered;
      const double load_cpu_ms_per_request = 1e3 * (OwnCpuSeconds() - own_cpu0) / answered;
      const int batch = std::max(1, static_cast<int>(r.mean_batch + 0.5));
      const double offline = OfflineThroughput(**engine, batch, length, std::min(seconds, 2.0));
      // The engine alone keeps every core busy: its CPU per request is cores / offline rate.
      const double offline_cpu_ms = 1e3 * cores / offline;
      std::printf("| %s | %d | %.1f | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f | %.0f%% | %.0f%% | %llu |\n",
                  max_batch == 1 ? "--max-batch-size 1" : "--max-batch-size 64", c,
                  r.requests_per_s, r.p50_ms, r.p99_ms, r.mean_batch, cpu_ms_per_request,
                  load_cpu_ms_per_request, offline,
                  100 * r.requests_per_s / offline, 100 * offline_cpu_ms / cpu_ms_per_request,
                  static_cast<unsigned long long>(r.errors));
      std::fflush(stdout);
    }
  }
  return 0;
}
