#include "bench/serve_bench_overhead.h"

#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "attnserve/v1/attention.grpc.pb.h"
#include "bench/bench_case.h"
#include "bench/serve_process.h"
#include "core/onednn_engine.h"
#include "core/safetensors.h"
#include "server/options.h"
#include "server/reply.h"

namespace attnserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr Shape kLongShape{1, 2048, 1024, 16};  // part 3's model and request
constexpr char kLongModel[] = "long";

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// `batch` sequences of `length` random rows (seed 3) of `d_model`, asking
// for `mode` weights. The data lives as long as the object.
struct OfflineBatch {
  std::vector<float> data;
  std::vector<core::SequenceInput> seqs;
  OfflineBatch(uint32_t d_model, int batch, uint32_t length, core::WeightsMode mode) {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    data.resize(size_t(batch) * length * d_model);
    for (float& x : data) x = u(rng);
    seqs.resize(batch);
    const size_t n = size_t(length) * d_model;
    for (int b = 0; b < batch; ++b) {
      seqs[b].data = std::span<const float>(data).subspan(b * n, n);
      seqs[b].length = length;
      seqs[b].weights = mode;
    }
  }
};

// The engine alone on one batch, after a warm-up run, over at least
// `min_runs` runs and `seconds`.
struct OfflineTiming {
  double median_ms = 0;      // one Run; 0 when a run failed
  double cpu_ms_per_seq = 0;  // this process's CPU time over the sequences computed
};
OfflineTiming TimeRuns(core::Engine& engine, const OfflineBatch& batch, int min_runs,
                       double seconds, std::vector<core::SequenceOutput>* last = nullptr) {
  if (!engine.Run(batch.seqs).ok()) return {};
  std::vector<double> ms;
  const double cpu0 = OwnCpuSeconds();
  const auto stop = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < stop || static_cast<int>(ms.size()) < min_runs) {
    const auto t0 = Clock::now();
    auto out = engine.Run(batch.seqs);
    ms.push_back(MsSince(t0));
    if (!out.ok()) return {};
    if (last != nullptr) *last = *std::move(out);
  }
  const double sequences = double(ms.size()) * batch.seqs.size();
  return {Percentile(ms, 0.5), 1e3 * (OwnCpuSeconds() - cpu0) / sequences};
}

// The engine alone on batches of `batch` x `length`: sequences/s and CPU.
struct OfflineRate {
  double per_s = 0;
  double cpu_ms_per_seq = 0;
};
OfflineRate MeasureRate(core::Engine& engine, int batch, uint32_t length, double seconds) {
  const OfflineBatch b(engine.model().config.d_model, batch, length, core::WeightsMode::kNone);
  const OfflineTiming t = TimeRuns(engine, b, 5, seconds);
  if (t.median_ms == 0) return {};
  return {1e3 * batch / t.median_ms, t.cpu_ms_per_seq};
}

// An Attention service that answers every Attend at once with the same
// bytes, without parsing the request: what gRPC alone costs for a call with
// these request and reply sizes, on this machine, with this client.
class ImmediateAttention final
    : public v1::Attention::WithRawCallbackMethod_Attend<v1::Attention::CallbackService> {
 public:
  explicit ImmediateAttention(grpc::ByteBuffer reply) : reply_(std::move(reply)) {}
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context, const grpc::ByteBuffer*,
                                   grpc::ByteBuffer* response) override {
    *response = reply_;  // shares the slices
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const grpc::ByteBuffer reply_;
};

// The c = 1 level against ImmediateAttention answering with the reply the
// server would send: an output the size of the request's input and
// `matrices` L x L attention matrices; in this process, on 127.0.0.1.
// errors = 1 when the server could not start.
LevelResult GrpcAlone(const v1::AttendRequest& request, int matrices, double seconds) {
  LevelResult failed;
  failed.errors = 1;
  const uint32_t length = request.input().rows();
  v1::AttendResponse reply;
  reply.set_request_id("immediate");
  reply.set_model(request.model());
  *reply.mutable_output() = request.input();
  for (int m = 0; m < matrices; ++m) {
    v1::Matrix* w = reply.add_attention();
    w->set_rows(length);
    w->set_cols(length);
    w->mutable_data()->Resize(static_cast<int>(length * length), 0.5f / length);
  }
  reply.mutable_stats()->set_batch_size(1);
  reply.mutable_stats()->set_batch_tokens(length);
  grpc::ByteBuffer bytes;
  bool own = false;
  if (!grpc::SerializationTraits<v1::AttendResponse>::Serialize(reply, &bytes, &own).ok()) {
    return failed;
  }
  ImmediateAttention service(std::move(bytes));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return failed;
  client::ClientOptions client;
  client.target = "127.0.0.1:" + std::to_string(port);
  LevelResult r = RunLevel(client, 1, seconds, request);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return r;
}

// Where a lone request's time goes: means, in ms.
struct Breakdown {
  double end_to_end = 0, grpc_alone = 0, queue = 0, compute = 0, offline = 0;
  double engine_extra() const { return compute - offline; }  // the server's engine beside offline
  double rest() const { return end_to_end - grpc_alone - queue - compute; }
};

// One load level against the attnserve process, with the CPU both sides used.
struct Measured {
  LevelResult load;
  double server_cpu_ms = 0;  // per answered request
  double load_cpu_ms = 0;    // the load generator's, per answered request
  OfflineRate offline;       // the engine alone on batches of the mean size
};

Measured MeasureLevel(ServerProcess& server, core::Engine& engine, int concurrency,
                      const v1::AttendRequest& request, double seconds) {
  Measured m;
  const double cpu0 = server.CpuSeconds(), own_cpu0 = OwnCpuSeconds();
  m.load = RunLevel(server.client(), concurrency, seconds, request);
  const double answered = std::max(1.0, m.load.requests_per_s * m.load.elapsed_s);
  m.server_cpu_ms = 1e3 * (server.CpuSeconds() - cpu0) / answered;
  m.load_cpu_ms = 1e3 * (OwnCpuSeconds() - own_cpu0) / answered;
  const int batch = std::max(1, static_cast<int>(m.load.mean_batch + 0.5));
  m.offline = MeasureRate(engine, batch, request.input().rows(), std::min(seconds, 2.0));
  return m;
}

// Part 3, per weights mode: through the server, and the reply building alone.
struct LongFigures {
  Breakdown through_server;  // c = 1 against the binary on the written model
  uint64_t errors = 0;
  double reply_mib = 0;      // the reply's size
  double build_ms = 0;       // SerializeReply (now), median
  double protobuf_ms = 0;    // weights copied into the message + serialized (before), median
};

// Writes kLongShape's random model (core_bench's BenchModel) as
// `repository`/long: config.json and weights.safetensors.
bool WriteLongModel(const std::string& repository) {
  const auto model = BenchModel(kLongShape, false);
  const std::string dir = repository + "/" + kLongModel;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return false;
  std::ofstream(dir + "/config.json")
      << R"({"d_model": )" << kLongShape.d_model << R"(, "num_heads": )" << kLongShape.heads
      << R"(, "positional": "none", "max_length": )" << kLongShape.length
      << R"(, "relevance": "dot", "normalization": "softmax", "projections": true,)"
      << R"( "precision": "fp32"})";
  const int64_t d = kLongShape.d_model;
  const core::ModelWeights& w = model->weights;
  std::map<std::string, core::TensorToWrite> tensors;
  auto& in_proj = tensors["in_proj_weight"];
  in_proj.shape = {3 * d, d};
  auto& in_bias = tensors["in_proj_bias"];
  in_bias.shape = {3 * d};
  for (const auto* part : {&w.q_weight, &w.k_weight, &w.v_weight}) {
    in_proj.values.insert(in_proj.values.end(), part->begin(), part->end());
  }
  for (const auto* part : {&w.q_bias, &w.k_bias, &w.v_bias}) {
    in_bias.values.insert(in_bias.values.end(), part->begin(), part->end());
  }
  tensors["out_proj.weight"] = {{d, d}, w.out_weight};
  tensors["out_proj.bias"] = {{d}, w.out_bias};
  return core::WriteSafetensors(dir + "/weights.safetensors", tensors).ok();
}

// The reply building alone, in this process, on `engine`'s output for `batch`.
void TimeReplyBuilding(core::Engine& engine, const OfflineBatch& batch, LongFigures* f) {
  std::vector<core::SequenceOutput> outs;
  if (TimeRuns(engine, batch, 1, 0, &outs).median_ms == 0 || outs.size() != 1) return;
  const core::SequenceOutput& out = outs[0];
  v1::AttendResponse head;
  head.set_request_id("0123abcd-42");
  head.set_model(kLongModel);
  head.mutable_stats()->set_batch_size(1);
  head.mutable_stats()->set_batch_tokens(kLongShape.length);
  std::vector<double> build_ms, protobuf_ms;
  for (int run = 0; run < 7; ++run) {
    {  // now: the engine's buffers move into the reply's slices
      server::ReplyFloats output(out.output.begin(), out.output.end());  // as the engine left them
      std::vector<core::WeightsMatrix> attention = out.attention;
      grpc::ByteBuffer bytes;
      const auto t0 = Clock::now();
      if (!server::SerializeReply(head, out.rows, kLongShape.d_model, std::move(output),
                                  std::move(attention), kLongShape.length, &bytes)
               .ok()) {
        return;
      }
      build_ms.push_back(MsSince(t0));
      f->reply_mib = bytes.Length() / (1024.0 * 1024.0);
    }
    {  // before: the output already in the message (the engine wrote it
       // there), the weights copied in, everything serialized into new bytes
      v1::AttendResponse message = head;
      message.mutable_output()->set_rows(out.rows);
      message.mutable_output()->set_cols(kLongShape.d_model);
      message.mutable_output()->mutable_data()->Add(out.output.begin(), out.output.end());
      grpc::ByteBuffer bytes;
      bool own = false;
      const auto t0 = Clock::now();
      for (const core::WeightsMatrix& w : out.attention) {
        v1::Matrix* m = message.add_attention();
        m->set_rows(kLongShape.length);
        m->set_cols(kLongShape.length);
        m->mutable_data()->Add(w.begin(), w.end());
      }
      if (!grpc::SerializationTraits<v1::AttendResponse>::Serialize(message, &bytes, &own).ok()) {
        return;
      }
      protobuf_ms.push_back(MsSince(t0));
    }
  }
  f->build_ms = Percentile(build_ms, 0.5);
  f->protobuf_ms = Percentile(protobuf_ms, 0.5);
}

// Part 3 for weights none and mean.
std::vector<std::pair<const char*, LongFigures>> MeasureLong(const OverheadOptions& options) {
  std::vector<std::pair<const char*, LongFigures>> results = {{"none", {}}, {"mean", {}}};
  const std::string repository =
      (std::filesystem::temp_directory_path() / ("serve_bench." + std::to_string(getpid())))
          .string();
  if (!WriteLongModel(repository)) {
    std::fprintf(stderr, "cannot write the long-sequence model under %s\n", repository.c_str());
    for (auto& [name, f] : results) f.errors = 1;
    return results;
  }
  {
    ServerProcess server(options.server_binary, {"--max-batch-size", "1"}, {}, repository);
    v1::AttendRequest request = MakeRequest(kLongShape.length, kLongShape.d_model);
    request.set_model(kLongModel);
    auto engine = core::OneDnnEngine::Create(BenchModel(kLongShape, false));
    for (auto& [name, f] : results) {
      const bool mean = std::string(name) == "mean";
      request.set_weights(mean ? v1::WEIGHTS_MEAN : v1::WEIGHTS_NONE);
      if (!server.ok() || !engine.ok()) {
        f.errors = 1;
        continue;
      }
      const LevelResult l = RunLevel(server.client(), 1, std::max(options.seconds, 4.0), request);
      const LevelResult alone = GrpcAlone(request, mean ? 1 : 0, std::max(options.seconds, 4.0));
      const OfflineBatch input(kLongShape.d_model, 1, kLongShape.length,
                         mean ? core::WeightsMode::kMean : core::WeightsMode::kNone);
      f.through_server = {l.mean_ms, alone.mean_ms, l.mean_queue_ms, l.mean_compute_ms,
                          TimeRuns(**engine, input, 3, 1.0).median_ms};
      f.errors = l.errors + alone.errors;
      TimeReplyBuilding(**engine, input, &f);
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(repository, ec);
  return results;
}

const char* Verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

void PrintBreakdownRows(const Breakdown& b) {
  std::printf("| part | ms | share |\n|---|---|---|\n");
  auto row = [&](const char* part, double ms) {
    std::printf("| %s | %.3f | %.1f%% |\n", part, ms, 100 * ms / b.end_to_end);
  };
  row("gRPC alone: the same request and reply bytes, answered at once by an in-process server",
      b.grpc_alone);
  row("queue: from submission to the batch's start (Stats.queue_us; the batch thread's wake-up)",
      b.queue);
  row("engine, as fast as offline (this process, the same request, warm)", b.offline);
  row("engine, what the server adds (Stats.compute_us minus offline: OpenMP wake-ups, cold "
      "caches)",
      b.engine_extra());
  row("the server's own rest: parse, validation, metrics, reply, the hand-offs to and from gRPC",
      b.rest());
  row("end to end (the client's mean)", b.end_to_end);
}

void PrintLong(const std::vector<std::pair<const char*, LongFigures>>& longs) {
  std::printf("\nLong sequences: L = %d, d_model = %d, %d heads, fp32, one request at a time "
              "through the server (--max-batch-size 1), means over the level's calls\n",
              kLongShape.length, kLongShape.d_model, kLongShape.heads);
  for (const auto& [name, f] : longs) {
    std::printf("\nweights %s (reply %.1f MiB)\n\n", name, f.reply_mib);
    PrintBreakdownRows(f.through_server);
  }
  std::printf("\nBuilding the reply alone (this process, the engine's output; medians)\n\n"
              "| weights | reply MiB | SerializeReply ms (now) | protobuf copy + serialize ms "
              "(before) |\n|---|---|---|---|\n");
  for (const auto& [name, f] : longs) {
    std::printf("| %s | %.1f | %.3f | %.2f |\n", name, f.reply_mib, f.build_ms, f.protobuf_ms);
  }
}

}  // namespace

int RunOverheadReport(const OverheadOptions& options) {
  auto model = core::LoadModel(std::string(ATTNSERVE_SOURCE_DIR) + "/models/demo");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  auto engine =
      core::OneDnnEngine::Create(std::make_shared<const core::Model>(*std::move(model)));
  if (!engine.ok()) return 1;
  const uint32_t d_model = (*engine)->model().config.d_model;
  const v1::AttendRequest request = MakeRequest(options.length, d_model);
  std::printf("serve_bench on %s, %d CPUs available, load average %s; demo model (d_model %u), "
              "L = %u, %.0f s a level\n\n",
              CpuModel().c_str(), server::AvailableCpus(), LoadAverage().c_str(), d_model,
              options.length, options.seconds);

  // The targets' references, measured with no load running: before, between
  // and after the servers' levels, the median of the three.
  const OfflineBatch one(d_model, 1, options.length, core::WeightsMode::kNone);
  std::vector<double> one_ms, rate_32, cpu_32;
  auto measure_references = [&] {
    one_ms.push_back(TimeRuns(**engine, one, 50, 1.0).median_ms);
    const OfflineRate r = MeasureRate(**engine, 32, options.length, 1.0);
    rate_32.push_back(r.per_s);
    cpu_32.push_back(r.cpu_ms_per_seq);
  };
  measure_references();

  std::printf("| server | concurrency | requests/s | p50 ms | p99 ms | mean batch | server CPU "
              "ms/req | load generator CPU ms/req | offline req/s | serving / offline | server "
              "efficiency | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<int, Measured> batched;  // --max-batch-size 64, by concurrency
  uint64_t errors = 0;
  for (uint32_t max_batch : {64u, 1u}) {
    std::vector<std::string> flags = {"--max-batch-size", std::to_string(max_batch)};
    if (options.max_queue_delay_us >= 0) {
      flags.insert(flags.end(),
                   {"--max-queue-delay-us", std::to_string(options.max_queue_delay_us)});
    }
    ServerProcess server(options.server_binary, flags);
    if (!server.ok()) {
      std::fprintf(stderr, "cannot start %s\n", options.server_binary.c_str());
      return 1;
    }
    for (int c : options.levels) {
      const Measured m = MeasureLevel(server, **engine, c, request, options.seconds);
      std::printf("| --max-batch-size %u | %d | %.1f | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f "
                  "| %.0f%% | %.0f%% | %llu |\n",
                  max_batch, c, m.load.requests_per_s, m.load.p50_ms, m.load.p99_ms,
                  m.load.mean_batch, m.server_cpu_ms, m.load_cpu_ms, m.offline.per_s,
                  100 * m.load.requests_per_s / m.offline.per_s,
                  100 * m.offline.cpu_ms_per_seq / m.server_cpu_ms,
                  static_cast<unsigned long long>(m.load.errors));
      std::fflush(stdout);
      errors += m.load.errors;
      if (max_batch == 64) batched[c] = m;
    }
    if (max_batch == 64) measure_references();
  }
  measure_references();
  const double offline_one_ms = Percentile(one_ms, 0.5);
  const double offline_32_rate = Percentile(rate_32, 0.5);
  const double offline_32_cpu_ms = Percentile(cpu_32, 0.5);

  if (batched.count(1)) {
    const LevelResult& l = batched[1].load;
    const LevelResult alone = GrpcAlone(request, 0, options.seconds);
    errors += alone.errors;
    std::printf("\nConcurrency 1, --max-batch-size 64: where a request's time goes (means over "
                "the level's %.0f calls)\n\n",
                l.requests_per_s * l.elapsed_s);
    PrintBreakdownRows({l.mean_ms, alone.mean_ms, l.mean_queue_ms, l.mean_compute_ms,
                        offline_one_ms});
    std::printf("\nTails: end to end p50 %.3f ms, p99 %.3f ms; gRPC alone p50 %.3f ms, p99 "
                "%.3f ms\n",
                l.p50_ms, l.p99_ms, alone.p50_ms, alone.p99_ms);
  }

  std::vector<std::pair<const char*, LongFigures>> longs;
  if (options.long_sequences) {
    longs = MeasureLong(options);
    for (const auto& [name, f] : longs) errors += f.errors;
    PrintLong(longs);
  }

  std::printf("\nTargets (this run)\n\n| target | measured | bound | result |\n"
              "|---|---|---|---|\n");
  if (batched.count(1)) {
    const LevelResult& l = batched[1].load;
    const double bound = offline_one_ms + 0.20;
    std::printf("| c = 1: p50 <= the engine offline + 0.20 ms | %.3f ms | %.3f ms (%.3f + 0.20) "
                "| %s |\n",
                l.p50_ms, bound, offline_one_ms, Verdict(l.p50_ms <= bound));
    std::printf("| c = 1: p99 <= 2 x p50 | %.3f ms | %.3f ms | %s |\n", l.p99_ms, 2 * l.p50_ms,
                Verdict(l.p99_ms <= 2 * l.p50_ms));
  }
  if (batched.count(64)) {
    const Measured& m = batched[64];
    std::printf("| c = 64: server CPU per request <= 1.10 x the engine's offline (batch 32: "
                "%.3f ms, %.0f per s) | %.3f ms (%.2fx) | %.3f ms | %s |\n",
                offline_32_cpu_ms, offline_32_rate, m.server_cpu_ms,
                m.server_cpu_ms / offline_32_cpu_ms, 1.10 * offline_32_cpu_ms,
                Verdict(m.server_cpu_ms <= 1.10 * offline_32_cpu_ms));
    const double bound = 0.85 * m.offline.per_s;
    std::printf("| c = 64: requests/s >= 85%% of the engine offline on the same batches (%.1f), "
                "raw | %.1f (%.0f%%) | %.1f | %s |\n",
                m.load.mean_batch, m.load.requests_per_s,
                100 * m.load.requests_per_s / m.offline.per_s, bound,
                Verdict(m.load.requests_per_s >= bound));
    // The load generator used load_cpu_ms per request of the same CPUs: the
    // server had the rest of them.
    const int cpus = server::AvailableCpus();
    const double load_cpus = m.load_cpu_ms * m.load.requests_per_s / 1e3;
    const double aside = m.load.requests_per_s * cpus / std::max(0.1, cpus - load_cpus);
    std::printf("| c = 64: the same, the load generator's CPU (%.2f of %d CPUs) set aside | %.1f "
                "(%.0f%%) | %.1f | %s |\n",
                load_cpus, cpus, aside, 100 * aside / m.offline.per_s, bound,
                Verdict(aside >= bound));
  }
  for (const auto& [name, f] : longs) {
    const Breakdown& b = f.through_server;
    std::printf("| L = %d, d = %d, weights %s: the server's own rest (parse, validation, reply) "
                "<= 5%% of the engine | %.2f ms (%.1f%% of %.1f) | %.1f ms | %s |\n",
                kLongShape.length, kLongShape.d_model, name, b.rest(), 100 * b.rest() / b.compute,
                b.compute, 0.05 * b.compute,
                Verdict(f.errors == 0 && b.compute > 0 && b.rest() <= 0.05 * b.compute));
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace attnserve::bench
