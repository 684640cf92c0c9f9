// serve_bench: how much of the engine's offline throughput the server keeps
// under load. Starts attnserve in-process on 127.0.0.1 (a free port) on the
// demo model, drives it closed-loop over gRPC at each concurrency with L=128
// requests, and prints requests/s, p50/p99 latency and the mean batch size
// from the replies' Stats; then, in the same run, the engine's offline
// throughput for the same batch composition (batches of that mean size, run
// back to back) and the ratio serving / offline. Repeated with
// --max-batch-size 1 to show what batching gains. Bounded: each level runs
// for --seconds and stops by itself.
//
//   build/bench/serve_bench [--seconds 5] [--concurrency 1,16,64] [--length 128]

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attnserve/v1/attention.grpc.pb.h"
#include "server/server.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = attnserve::v1;

struct LevelResult {
  int concurrency = 0;
  double requests_per_s = 0, p50_ms = 0, p99_ms = 0, mean_batch = 0;
  uint64_t errors = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

v1::AttendRequest MakeRequest(uint32_t length, uint32_t d_model, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  v1::AttendRequest r;
  r.mutable_input()->set_rows(length);
  r.mutable_input()->set_cols(d_model);
  for (uint32_t i = 0; i < length * d_model; ++i) r.mutable_input()->add_data(u(rng));
  return r;
}

// Closed loop: `concurrency` threads, each with its own stub over one of a
// few channels, sending back to back for `seconds`.
LevelResult RunLevel(const std::string& target, int concurrency, double seconds,
                     const v1::AttendRequest& request) {
  const int channels = std::min(concurrency, 4);
  std::vector<std::shared_ptr<grpc::Channel>> chans;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", c);  // distinct channels, not one shared subchannel
    args.SetMaxReceiveMessageSize(64 << 20);
    chans.push_back(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  }
  std::vector<std::vector<double>> latencies(concurrency);
  std::vector<double> batch_sum(concurrency, 0);
  std::atomic<uint64_t> errors{0};
  const auto start = Clock::now();
  const auto stop = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Attention::NewStub(chans[t % channels]);
      while (Clock::now() < stop) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        v1::AttendResponse reply;
        const auto t0 = Clock::now();
        grpc::Status s = stub->Attend(&ctx, request, &reply);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (!s.ok()) {
          ++errors;
          continue;
        }
        latencies[t].push_back(ms);
        batch_sum[t] += reply.stats().batch_size();
      }
    });
  }
  for (auto& th : threads) th.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  double batches = 0;
  for (int t = 0; t < concurrency; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    batches += batch_sum[t];
  }
  LevelResult r;
  r.concurrency = concurrency;
  r.requests_per_s = all.size() / elapsed;
  r.p50_ms = Percentile(all, 0.50);
  r.p99_ms = Percentile(all, 0.99);
  r.mean_batch = all.empty() ? 0 : batches / all.size();
  r.errors = errors;
  return r;
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
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") seconds = std::stod(argv[i + 1]);
    else if (flag == "--length") length = std::stoul(argv[i + 1]);
    else if (flag == "--concurrency") levels = ParseList(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: serve_bench [--seconds S] [--length L] [--concurrency 1,16,64]\n");
      return 2;
    }
  }
  std::printf("| server | concurrency | requests/s | p50 ms | p99 ms | mean batch | offline req/s | serving / offline | errors |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t max_batch : {64u, 1u}) {
    attnserve::server::ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.metrics_port = 0;
    o.model_repository = attnserve::server::DefaultModelRepository();
    o.default_model = "demo";
    o.batching.max_batch_size = max_batch;
    o.log_level = "warn";
    auto server = attnserve::server::AttnServer::Start(o);
    if (!server.ok()) {
      std::fprintf(stderr, "cannot start server: %s\n", std::string(server.status().message()).c_str());
      return 1;
    }
    const std::string target = "127.0.0.1:" + std::to_string((*server)->port());
    auto* served = (*server)->registry().Find("");
    const v1::AttendRequest request = MakeRequest(length, served->config().d_model, 1);
    for (int c : levels) {
      LevelResult r = RunLevel(target, c, seconds, request);
      const int batch = std::max(1, static_cast<int>(r.mean_batch + 0.5));
      const double offline = OfflineThroughput(*served->engine, batch, length, std::min(seconds, 2.0));
      std::printf("| %s | %d | %.1f | %.2f | %.2f | %.1f | %.1f | %.0f%% | %llu |\n",
                  max_batch == 1 ? "--max-batch-size 1" : "batching (64)", c, r.requests_per_s,
                  r.p50_ms, r.p99_ms, r.mean_batch, offline, 100 * r.requests_per_s / offline,
                  static_cast<unsigned long long>(r.errors));
      std::fflush(stdout);
    }
    (*server)->Drain();
  }
  return 0;
}
