// soak: does a real attnserve hold its memory and file descriptors steady
// under hours of mixed traffic? Starts the attnserve binary as a child process
// on 127.0.0.1 (--port 0, the port read back from its log), then drives it
// from --concurrency threads for --seconds with a mix of what clients do:
// unary calls of random length, mask, weights mode and pooling; calls whose
// deadline expires while queued or computing; calls cancelled mid-flight;
// streams of several messages, some cancelled after the first reply; and
// invalid requests (wrong width, unknown model). Every OK reply's shapes are
// checked against the request.
//
// Reports the calls by kind and status code, and the server's RSS and open
// file descriptors (from /proc/PID) at start, after --warmup-seconds, every
// --sample-seconds, at the end of the load and after it has been idle for a
// few seconds; then SIGTERMs the server and reports its exit.
//
// Leaks are judged on settled RSS, not on a sample under load: what a loaded
// server holds at one instant depends on the calls in flight (eight 2 MiB
// per-head replies come and go) and on when the allocator last returned
// freed pages, so two samples under load differ by ±10% with no leak at all.
// After warm-up the clients pause, the server is left idle for
// --settle-seconds (longer than jemalloc's 10 s decay), and its RSS is the
// baseline; the same is done after the load. Exit code 1 when the settled RSS
// grew more than --max-rss-growth-percent, when the fd count grew, when a
// reply was malformed or a call got an unexpected code, or when the server
// died or did not exit 0.
//
//   build/bench/soak [--seconds 600] [--warmup-seconds 60] [--settle-seconds 15]
//                    [--concurrency 8] [--max-length 256] [--server-binary PATH]
//                    [--model-repository DIR] [--server-flag FLAG]...
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "attnserve/v1/attention.grpc.pb.h"
#include "bench/soak_server.h"

namespace {

namespace v1 = attnserve::v1;
using Clock = std::chrono::steady_clock;
using attnserve::bench::SoakServer;

struct Flags {
  double seconds = 600;
  double warmup_seconds = -1;  // < 0: min(60, seconds / 5)
  double sample_seconds = 30;
  double settle_seconds = 15;
  int concurrency = 8;
  uint32_t max_length = 256;
  double max_rss_growth_percent = 2.0;
  std::string server_binary = ATTNSERVE_BINARY;
  std::string model_repository = std::string(ATTNSERVE_SOURCE_DIR) + "/models";
  std::vector<std::string> server_flags;
};

// What one call was; the keys of the report.
enum Kind { kUnary, kDeadline, kCancel, kStream, kStreamCancel, kBadWidth, kUnknownModel, kKinds };
const char* const kKindNames[kKinds] = {"unary",          "unary-deadline", "unary-cancel",
                                        "stream",         "stream-cancel",  "invalid-width",
                                        "unknown-model"};

// The codes each kind may end with; anything else is a failure.
bool Expected(Kind kind, grpc::StatusCode code) {
  using C = grpc::StatusCode;
  switch (kind) {
    case kUnary:
    case kStream:  // RESOURCE_EXHAUSTED: the queue limit, a correct answer under load
      return code == C::OK || code == C::RESOURCE_EXHAUSTED;
    case kDeadline:
      return code == C::OK || code == C::DEADLINE_EXCEEDED || code == C::RESOURCE_EXHAUSTED;
    case kCancel:
    case kStreamCancel:
      return code == C::OK || code == C::CANCELLED || code == C::RESOURCE_EXHAUSTED;
    case kBadWidth:
      return code == C::INVALID_ARGUMENT;
    case kUnknownModel:
      return code == C::NOT_FOUND;
    default:
      return false;
  }
}

struct ModelShape {
  std::string name;
  uint32_t d_model = 0, num_heads = 0, max_length = 0;
};

// Call counts by kind and code, and malformed replies. Thread-safe.
class Tally {
 public:
  void Add(Kind kind, grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[kind][code];
    if (!Expected(kind, code)) ++unexpected_;
  }
  void BadReply(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bad_replies_++ < 5) std::fprintf(stderr, "soak: malformed reply: %s\n", what.c_str());
  }
  uint64_t Total() const {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t n = 0;
    for (const auto& kind : counts_) {
      for (const auto& code : kind) n += code.second;
    }
    return n;
  }
  // Prints the table; returns false when a call failed its expectation.
  bool Print() const {
    std::lock_guard<std::mutex> lock(mu_);
    static const char* const kCodeNames[] = {
        "OK",          "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS",    "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",   "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",       "DATA_LOSS",
        "UNAUTHENTICATED"};
    std::printf("calls by kind and code:\n");
    for (int k = 0; k < kKinds; ++k) {
      uint64_t total = 0;
      std::string codes;
      for (const auto& [code, n] : counts_[k]) {
        total += n;
        codes += std::string(" ") + (code >= 0 && code <= 16 ? kCodeNames[code] : "?") + "=" +
                 std::to_string(n);
      }
      std::printf("  %-15s %8llu %s\n", kKindNames[k], static_cast<unsigned long long>(total),
                  codes.c_str());
    }
    std::printf("unexpected codes: %llu, malformed replies: %llu\n",
                static_cast<unsigned long long>(unexpected_),
                static_cast<unsigned long long>(bad_replies_));
    return unexpected_ == 0 && bad_replies_ == 0;
  }

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> counts_[kKinds];
  uint64_t unexpected_ = 0;
  uint64_t bad_replies_ = 0;
};

// A request of random length in [1, max_length], with a mask (none, causal,
// window, both, or a random graph), weights mode and pooling of `variant`.
v1::AttendRequest MixedRequest(std::mt19937& rng, const ModelShape& m, uint32_t max_length,
                               int variant) {
  const uint32_t length = 1 + rng() % max_length;
  v1::AttendRequest request;
  request.set_model(m.name);
  v1::Matrix* input = request.mutable_input();
  input->set_rows(length);
  input->set_cols(m.d_model);
  std::uniform_real_distribution<float> u(-1, 1);
  input->mutable_data()->Reserve(length * m.d_model);
  for (uint32_t i = 0; i < length * m.d_model; ++i) input->add_data(u(rng));
  v1::Mask* mask = request.mutable_mask();
  switch (variant % 5) {
    case 1:
      mask->set_causal(true);
      break;
    case 2:
      mask->set_window(1 + rng() % 8);
      break;
    case 3:
      mask->set_causal(true);
      mask->set_window(1 + rng() % 4);
      break;
    case 4:
      for (uint32_t e = 0; e < 2 * length; ++e) {
        mask->add_edges(rng() % length);
        mask->add_edges(rng() % length);
      }
      break;
  }
  request.set_weights(static_cast<v1::WeightsMode>(variant % 3));
  request.set_pooling(static_cast<v1::Pooling>((variant / 3) % 3));
  return request;
}

// Empty when `reply` has the shapes `request` asks for; else what is wrong.
std::string CheckReply(const v1::AttendRequest& request, const v1::AttendResponse& reply,
                       const ModelShape& m) {
  const uint32_t L = request.input().rows();
  const uint32_t rows = request.pooling() == v1::POOLING_NONE ? L : 1;
  const v1::Matrix& out = reply.output();
  if (out.rows() != rows || out.cols() != m.d_model ||
      static_cast<uint64_t>(out.data_size()) != uint64_t{rows} * m.d_model) {
    return "output shape";
  }
  const int matrices = request.weights() == v1::WEIGHTS_PER_HEAD ? static_cast<int>(m.num_heads)
                       : request.weights() == v1::WEIGHTS_MEAN   ? 1
                                                                 : 0;
  if (reply.attention_size() != matrices) return "attention count";
  for (const v1::Matrix& w : reply.attention()) {
    if (w.rows() != L || w.cols() != L || static_cast<uint64_t>(w.data_size()) != uint64_t{L} * L) {
      return "attention shape";
    }
  }
  return "";
}

// Lets the main thread stop every client between calls (to read a settled
// RSS) and start them again.
class PauseGate {
 public:
  // Called by a client between calls: blocks while paused (unless stopping).
  void Checkpoint(const std::atomic<bool>& stop) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!paused_) return;
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !paused_ || stop.load(); });
    --waiting_;
  }
  // Pauses and waits until all `clients` are between calls.
  void PauseAll(int clients) {
    std::unique_lock<std::mutex> lock(mu_);
    paused_ = true;
    cv_.wait(lock, [&] { return waiting_ == clients; });
  }
  void Resume() {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = false;
    cv_.notify_all();
  }
  void Wake() { cv_.notify_all(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;
  int waiting_ = 0;
};

// One client thread: calls of every kind, in proportions that keep the
// server busy with real work (most calls compute) until `stop`.
void Worker(int index, const std::string& target, const ModelShape& m, const Flags& flags,
            const std::atomic<bool>& stop, PauseGate& gate, Tally& tally) {
  grpc::ChannelArguments args;
  args.SetInt("attnserve.soak.channel", index);  // one connection per worker
  args.SetMaxReceiveMessageSize(-1);
  auto stub = v1::Attention::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  std::mt19937 rng(1000 + index);
  int variant = index;
  while (!stop.load()) {
    gate.Checkpoint(stop);
    if (stop.load()) break;
    const uint32_t pick = rng() % 100;
    v1::AttendRequest request = MixedRequest(rng, m, flags.max_length, variant++);
    grpc::ClientContext ctx;
    v1::AttendResponse reply;
    if (pick < 50) {  // plain unary
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      const grpc::Status s = stub->Attend(&ctx, request, &reply);
      if (s.ok()) {
        if (std::string bad = CheckReply(request, reply, m); !bad.empty()) tally.BadReply(bad);
      }
      tally.Add(kUnary, s.error_code());
    } else if (pick < 60) {  // a deadline that often passes in the queue or mid-compute
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::microseconds(rng() % 3000));
      tally.Add(kDeadline, stub->Attend(&ctx, request, &reply).error_code());
    } else if (pick < 70) {  // cancelled after 0-3 ms
      std::promise<grpc::Status> done;
      stub->async()->Attend(&ctx, &request, &reply,
                            [&done](grpc::Status s) { done.set_value(std::move(s)); });
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
      ctx.TryCancel();
      tally.Add(kCancel, done.get_future().get().error_code());
    } else if (pick < 90) {  // a stream of 1-6 messages; a third cancelled after one reply
      const bool cancel = pick >= 83;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto stream = stub->AttendStream(&ctx);
      const int n = 1 + rng() % 6;
      std::map<std::string, v1::AttendRequest> sent;
      for (int i = 0; i < n; ++i) {
        v1::AttendRequest r = i == 0 ? request : MixedRequest(rng, m, flags.max_length, variant++);
        r.set_request_id("s" + std::to_string(i));
        if (!stream->Write(r)) break;
        sent[r.request_id()] = std::move(r);
      }
      stream->WritesDone();
      int replies = 0;
      while (stream->Read(&reply)) {
        auto it = sent.find(reply.request_id());
        if (it == sent.end()) {
          tally.BadReply("stream reply with unknown request_id");
        } else if (std::string bad = CheckReply(it->second, reply, m); !bad.empty()) {
          tally.BadReply("stream " + bad);
        }
        if (++replies == 1 && cancel) ctx.TryCancel();
      }
      tally.Add(cancel ? kStreamCancel : kStream, stream->Finish().error_code());
    } else if (pick < 95) {  // one column short
      request.mutable_input()->set_cols(m.d_model - 1);
      request.mutable_input()->mutable_data()->Truncate(request.input().rows() * (m.d_model - 1));
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      tally.Add(kBadWidth, stub->Attend(&ctx, request, &reply).error_code());
    } else {
      request.set_model("no-such-model");
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      tally.Add(kUnknownModel, stub->Attend(&ctx, request, &reply).error_code());
    }
  }
}

absl::StatusOr<ModelShape> DefaultModel(const std::string& target) {
  auto stub = v1::Attention::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse models;
  const grpc::Status s = stub->ListModels(&ctx, {}, &models);
  if (!s.ok()) return absl::UnavailableError("ListModels: " + s.error_message());
  for (const v1::ModelInfo& info : models.models()) {
    if (info.is_default() || models.models_size() == 1) {
      return ModelShape{info.name(), info.d_model(), info.num_heads(), info.max_length()};
    }
  }
  return absl::NotFoundError("no default model");
}

void PrintSample(const char* label, double at_s, const SoakServer::Usage& u, uint64_t calls) {
  std::printf("%-12s t=%7.1fs  rss=%8.1f MiB  fds=%4d  calls=%llu\n", label, at_s,
              u.rss_bytes / 1048576.0, u.open_fds, static_cast<unsigned long long>(calls));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"soak: a real attnserve under mixed traffic; reports RSS and fds"};
  app.add_option("--seconds", flags.seconds, "length of the load");
  app.add_option("--warmup-seconds", flags.warmup_seconds,
                 "RSS baseline taken after this long (default min(60, seconds / 5))");
  app.add_option("--sample-seconds", flags.sample_seconds, "print RSS and fds this often");
  app.add_option("--settle-seconds", flags.settle_seconds,
                 "idle time before each settled RSS reading (after warm-up, after the load)");
  app.add_option("--concurrency", flags.concurrency, "client threads, one connection each");
  app.add_option("--max-length", flags.max_length, "longest sequence sent");
  app.add_option("--max-rss-growth-percent", flags.max_rss_growth_percent,
                 "fail above this settled RSS growth from warm-up to the end");
  app.add_option("--server-binary", flags.server_binary, "the attnserve binary");
  app.add_option("--model-repository", flags.model_repository, "served models");
  app.add_option("--server-flag", flags.server_flags, "extra attnserve flag (repeatable)");
  CLI11_PARSE(app, argc, argv);
  if (flags.warmup_seconds < 0) flags.warmup_seconds = std::min(60.0, flags.seconds / 5);

  std::vector<std::string> server_args = {flags.server_binary, "--host", "127.0.0.1", "--port",
                                          "0", "--metrics-port", "0", "--model-repository",
                                          flags.model_repository};
  server_args.insert(server_args.end(), flags.server_flags.begin(), flags.server_flags.end());
  absl::StatusOr<std::unique_ptr<SoakServer>> server = SoakServer::Start(server_args);
  if (!server.ok()) {
    std::fprintf(stderr, "soak: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  SoakServer& s = **server;
  const std::string target = "127.0.0.1:" + std::to_string(s.port());
  absl::StatusOr<ModelShape> model = DefaultModel(target);
  if (!model.ok()) {
    std::fprintf(stderr, "soak: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  flags.max_length = std::min(flags.max_length, model->max_length);
  std::printf("soak: attnserve pid %d on %s, model %s (d_model %u, %u heads), %d clients, "
              "L in [1, %u], %.0f s (warm-up %.0f s)\n",
              s.pid(), target.c_str(), model->name.c_str(), model->d_model, model->num_heads,
              flags.concurrency, flags.max_length, flags.seconds, flags.warmup_seconds);

  Tally tally;
  const auto t0 = Clock::now();
  auto since = [&t0] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  const SoakServer::Usage start = s.ReadUsage();
  PrintSample("start", 0, start, 0);
  std::atomic<bool> stop{false};
  PauseGate gate;
  std::vector<std::thread> workers;
  for (int i = 0; i < flags.concurrency; ++i) {
    workers.emplace_back(Worker, i, target, std::cref(*model), std::cref(flags), std::cref(stop),
                         std::ref(gate), std::ref(tally));
  }
  auto settle = [&] {
    std::this_thread::sleep_for(std::chrono::duration<double>(flags.settle_seconds));
    return s.ReadUsage();
  };
  SoakServer::Usage warm{}, settled_warm{}, end{}, peak{};
  bool warmed = false, died = false;
  double paused_s = 0;  // settling time, not counted as load
  double next_sample = flags.sample_seconds;
  while (since() - paused_s < flags.seconds && !(died = !s.Running())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const double now = since();
    if (!warmed && now >= flags.warmup_seconds) {
      warm = peak = s.ReadUsage();
      warmed = true;
      PrintSample("after-warmup", now, warm, tally.Total());
      gate.PauseAll(flags.concurrency);
      settled_warm = settle();
      PrintSample("settled", since(), settled_warm, tally.Total());
      gate.Resume();
      paused_s += since() - now;
      next_sample = since() + flags.sample_seconds;
    }
    if (now >= next_sample) {
      const SoakServer::Usage u = s.ReadUsage();
      if (warmed) peak.rss_bytes = std::max(peak.rss_bytes, u.rss_bytes);
      PrintSample("sample", now, u, tally.Total());
      next_sample += flags.sample_seconds;
    }
  }
  if (!died) {
    end = s.ReadUsage();
    peak.rss_bytes = std::max(peak.rss_bytes, end.rss_bytes);
    PrintSample("end-of-load", since(), end, tally.Total());
  }
  const double elapsed = since() - paused_s;
  stop = true;
  gate.Wake();
  for (std::thread& t : workers) t.join();
  SoakServer::Usage idle{};
  if (!died) {
    idle = settle();
    PrintSample("settled", since(), idle, tally.Total());
  }
  const int exit_status = s.Stop();

  bool ok = tally.Print();
  const uint64_t calls = tally.Total();
  std::printf("calls: %llu in %.1f s of load (%.1f/s)\n", static_cast<unsigned long long>(calls),
              elapsed, calls / elapsed);
  if (died) {
    std::printf("FAIL: the server died during the soak; its last output:\n%s\n",
                s.Output().c_str());
    return 1;
  }
  auto percent = [](int64_t from, int64_t to) {
    return from > 0 ? 100.0 * (double(to) - double(from)) / double(from) : 0.0;
  };
  const double growth = percent(settled_warm.rss_bytes, idle.rss_bytes);
  constexpr double kMiB = 1048576.0;
  std::printf("rss: start %.1f MiB; settled after warm-up %.1f MiB, settled after the load "
              "%.1f MiB (%+.2f%%); under load: after warm-up %.1f MiB, end %.1f MiB (%+.2f%%), "
              "peak %.1f MiB (%+.2f%%)\n",
              start.rss_bytes / kMiB, settled_warm.rss_bytes / kMiB, idle.rss_bytes / kMiB, growth,
              warm.rss_bytes / kMiB, end.rss_bytes / kMiB, percent(warm.rss_bytes, end.rss_bytes),
              peak.rss_bytes / kMiB, percent(warm.rss_bytes, peak.rss_bytes));
  std::printf("fds: start %d, after warm-up %d, end of load %d, idle %d\n", start.open_fds,
              warm.open_fds, end.open_fds, idle.open_fds);
  std::printf("server exit after SIGTERM: %s\n", SoakServer::DescribeExit(exit_status).c_str());
  if (growth > flags.max_rss_growth_percent) {
    std::printf("FAIL: settled RSS grew %.2f%% after warm-up (limit %.2f%%)\n", growth,
                flags.max_rss_growth_percent);
    ok = false;
  }
  if (end.open_fds > warm.open_fds || idle.open_fds > settled_warm.open_fds) {
    std::printf("FAIL: open fds grew after warm-up\n");
    ok = false;
  }
  if (!WIFEXITED(exit_status) || WEXITSTATUS(exit_status) != 0) {
    std::printf("FAIL: the server did not drain and exit 0\n");
    ok = false;
  }
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
