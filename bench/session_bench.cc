// session_bench: what a streaming session (Attention.Session) saves over the
// way a growing causal sequence is served without one, re-sending its window
// through Attend for every chunk. The attnserve binary (a child process on
// the demo model, metrics on 127.0.0.1) serves S = 1, 16, 64 concurrent
// streams, one client thread and connection-sharing AttentionClient each,
// in chunks of 16 rows with window 512:
//  - session: each stream opens a session and appends 512 rows (32 chunks)
//    before the clock starts, so that its window is full, then appends
//    chunks for --seconds;
//  - re-send: each chunk sends the stream's last 512 rows (the new 16
//    included) through Attend with mask {causal, window 512} and keeps the
//    last 16 output rows. The client holds the window: it is full from the
//    first chunk and nothing needs warming but the connection.
// Per level and mode: chunks/s, chunk latency p50/p99, and the server's CPU
// per chunk (/proc/PID/stat: all the server did in the measured time over
// the chunks it answered); then the ratios and the targets (>= 10x less
// server CPU per chunk and >= 10x lower p50 at S = 1), and the session
// cache: attnserve_session_cache_bytes with S sessions open, over S, against
// 2 x window x d_model x 4 bytes (the demo model is fp32), within 5%; and
// what the caches really take: a fresh server's resident set before and with
// max(S) sessions open and full, per session, against the same prediction.
//
//   build/bench/session_bench [--seconds 5] [--sessions 1,16,64] [--chunk 16]
//                             [--window 512] [--server-binary PATH]
//                             [--server-flags "--threads 1 ..."]
//
// The demo model's sinusoidal positions end at its max_length (4096 rows): a
// session that gets there is closed, and a new one opened and refilled
// (window / chunk chunks) while the clock runs. The refill chunks are chunks
// of the same size the server answers, at no more cost than a full-window
// one (fewer keys), so chunks/s and the CPU per chunk count them; the
// latency percentiles do not (their window is not full). The table shows
// how many there were, and the CPU per chunk as if they were free.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <latch>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/serve_process.h"
#include "client/attention_client.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = attnserve::v1;
namespace client = attnserve::client;
using attnserve::bench::ParseIntList;
using attnserve::bench::Percentile;
using attnserve::bench::ServerProcess;

struct Options {
  double seconds = 5;
  std::vector<int> levels = {1, 16, 64};
  uint32_t chunk = 16;
  uint32_t window = 512;
  std::string binary = ATTNSERVE_BINARY;
  std::vector<std::string> server_flags;  // added to the server's command line
};

// The rows every stream sends: a pool of random rows (seed 1) repeated
// without end, cut into chunks. Stream s starts at chunk 7 s, so that
// concurrent streams differ. Read-only after construction: shared by every
// thread.
class RowPool {
 public:
  RowPool(uint32_t d_model, uint32_t chunk, uint32_t window) : d_(d_model), window_(window) {
    const uint32_t pool_chunks = (std::max(1024u, window) + chunk - 1) / chunk;
    pool_rows_ = pool_chunks * chunk;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> uniform(-1, 1);
    rows_.resize(uint64_t{pool_rows_} * d_);
    for (float& v : rows_) v = uniform(rng);
    // The first `window` rows again, so that every window is contiguous.
    rows_.insert(rows_.end(), rows_.begin(), rows_.begin() + uint64_t{window} * d_);
    for (uint32_t c = 0; c < pool_chunks; ++c) {
      v1::Matrix& m = chunks_.emplace_back();
      m.set_rows(chunk);
      m.set_cols(d_);
      m.mutable_data()->Assign(rows_.begin() + uint64_t{c} * chunk * d_,
                               rows_.begin() + uint64_t{c + 1} * chunk * d_);
    }
  }
  // Chunk `index` of the endless stream.
  const v1::Matrix& Chunk(uint64_t index) const { return chunks_[index % chunks_.size()]; }
  // The `window` rows that end with chunk `index`, the chunk included.
  const float* WindowEndingWith(uint64_t index) const {
    const uint64_t chunk = chunks_[0].rows();
    const uint64_t end = (index % chunks_.size() + 1) * chunk;
    return rows_.data() + (end + pool_rows_ - window_) % pool_rows_ * d_;
  }

 private:
  const uint32_t d_, window_;
  uint32_t pool_rows_ = 0;
  std::vector<float> rows_;  // pool_rows_ rows, then the first window_ of them again
  std::vector<v1::Matrix> chunks_;
};

// What one stream (one thread) measured.
struct StreamResult {
  std::vector<double> latencies_ms;  // one per measured (full-window) chunk
  uint64_t errors = 0;
  uint64_t refill_chunks = 0;  // appended to refill a new session while measuring
  std::string first_error;
  void Fail(const std::string& what) {
    if (errors++ == 0) first_error = what;
  }
};

// What every stream of one mode at one level measured together.
struct ModeResult {
  uint64_t chunks = 0;  // measured (full-window) chunks
  uint64_t errors = 0, refill_chunks = 0;
  std::string first_error;
  double elapsed_s = 0, p50_ms = 0, p99_ms = 0, server_cpu_s = 0, client_cpu_s = 0;
  std::optional<double> cache_bytes;  // the session mode's attnserve_session_cache_bytes
  uint64_t answered() const { return chunks + refill_chunks; }
  double per_s() const { return elapsed_s > 0 ? answered() / elapsed_s : 0; }
  double server_ms_per_chunk() const { return PerChunk(server_cpu_s, answered()); }
  double client_ms_per_chunk() const { return PerChunk(client_cpu_s, answered()); }
  // As if the refill chunks had cost the server nothing: an upper bound.
  double server_ms_per_measured_chunk() const { return PerChunk(server_cpu_s, chunks); }
  static double PerChunk(double seconds, uint64_t chunks) {
    return chunks > 0 ? 1e3 * seconds / chunks : 0;
  }
};

// What the streams share: the client, the rows, the model's limits.
struct Setup {
  client::AttentionClient* client;
  const RowPool* pool;
  const Options* options;
  v1::ModelInfo model;
};

std::string Describe(const grpc::Status& s) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())) + ": " +
         s.error_message();
}

// Rows a session of `model` may append: opened.max_tokens, and sinusoidal
// or learned positions end at max_length whatever that says.
uint64_t SessionLimit(const v1::SessionOpened& opened, const v1::ModelInfo& model) {
  uint64_t limit = opened.max_tokens() > 0 ? opened.max_tokens() : UINT64_MAX;
  if (model.positional() == "sinusoidal" || model.positional() == "learned") {
    limit = std::min<uint64_t>(limit, model.max_length());
  }
  return limit;
}

// One session stream: filled before `ready`, measured from `go` to `stop`.
void SessionStream(const Setup& setup, int stream, std::latch& ready, std::latch& go,
                   const Clock::time_point& stop, StreamResult* out) {
  const Options& o = *setup.options;
  v1::SessionOpen open;
  open.set_model(setup.model.name());
  open.set_window(o.window);
  std::unique_ptr<client::AttentionSession> session;
  uint64_t next = 7 * stream, appended = 0, limit = 0;
  v1::SessionResponse reply;
  uint64_t* filled = nullptr;  // counts the refill chunks once the clock runs
  auto open_and_fill = [&]() -> grpc::Status {
    if (session != nullptr) (void)session->Close();
    auto opened = setup.client->OpenSession(open);
    if (!opened.ok()) {
      return grpc::Status(static_cast<grpc::StatusCode>(opened.status().code()),
                          std::string(opened.status().message()));
    }
    session = *std::move(opened);
    limit = SessionLimit(session->opened(), setup.model);
    for (appended = 0; appended < o.window; appended += o.chunk) {
      if (grpc::Status s = session->Append(setup.pool->Chunk(next++), &reply); !s.ok()) return s;
      if (filled != nullptr) ++*filled;
    }
    return grpc::Status::OK;
  };
  grpc::Status status = open_and_fill();
  ready.count_down();
  go.wait();
  filled = &out->refill_chunks;
  while (status.ok() && Clock::now() < stop) {
    if (appended + o.chunk > limit) {
      status = open_and_fill();
      continue;
    }
    const Clock::time_point sent = Clock::now();
    status = session->Append(setup.pool->Chunk(next++), &reply);
    if (!status.ok()) break;
    out->latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - sent).count());
    appended += o.chunk;
  }
  if (!status.ok()) out->Fail(Describe(status));
  if (session != nullptr && status.ok()) (void)session->Close();
}

// One re-send stream: each chunk is the Attend of the window ending with it.
void ResendStream(const Setup& setup, int stream, std::latch& ready, std::latch& go,
                  const Clock::time_point& stop, StreamResult* out) {
  const Options& o = *setup.options;
  const uint64_t d = setup.model.d_model();
  v1::AttendRequest request;
  request.set_model(setup.model.name());
  request.mutable_input()->set_rows(o.window);
  request.mutable_input()->set_cols(static_cast<uint32_t>(d));
  request.mutable_mask()->set_causal(true);
  request.mutable_mask()->set_window(o.window);
  v1::AttendResponse reply;
  std::vector<float> kept(uint64_t{o.chunk} * d);  // the chunk's outputs, as a caller keeps them
  uint64_t next = 7 * stream;
  auto send = [&](bool timed) {
    const float* rows = setup.pool->WindowEndingWith(next++);
    request.mutable_input()->mutable_data()->Assign(rows, rows + uint64_t{o.window} * d);
    const Clock::time_point sent = Clock::now();
    const grpc::Status s = setup.client->Attend(request, &reply);
    if (!s.ok() || reply.output().data_size() < static_cast<int>(kept.size())) {
      out->Fail(s.ok() ? "a reply with fewer rows than the chunk" : Describe(s));
      return;
    }
    std::copy(reply.output().data().end() - kept.size(), reply.output().data().end(),
              kept.begin());
    if (timed) {
      out->latencies_ms.push_back(
          std::chrono::duration<double, std::milli>(Clock::now() - sent).count());
    }
  };
  send(false);  // the connection and the server's buffers, not timed
  ready.count_down();
  go.wait();
  while (Clock::now() < stop && out->errors < 100) send(true);
}

// `streams` streams of one mode for options.seconds, one thread each
// (started and joined here).
ModeResult RunMode(ServerProcess& server, const Setup& setup, int streams, bool sessions) {
  std::latch ready(streams), go(1);
  Clock::time_point stop;
  std::vector<StreamResult> results(streams);
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) {
    threads.emplace_back(sessions ? SessionStream : ResendStream, std::cref(setup), i,
                         std::ref(ready), std::ref(go), std::cref(stop), &results[i]);
  }
  ready.wait();
  ModeResult r;
  if (sessions) {
    r.cache_bytes = attnserve::bench::MetricSum(
        attnserve::bench::ScrapeMetrics(server.metrics_port()), "attnserve_session_cache_bytes");
  }
  const double server_cpu = server.CpuSeconds(), own_cpu = attnserve::bench::OwnCpuSeconds();
  const Clock::time_point start = Clock::now();
  stop = start + std::chrono::duration_cast<Clock::duration>(
                     std::chrono::duration<double>(setup.options->seconds));
  go.count_down();  // publishes `stop` to the streams
  for (std::thread& t : threads) t.join();
  r.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  r.server_cpu_s = server.CpuSeconds() - server_cpu;
  r.client_cpu_s = attnserve::bench::OwnCpuSeconds() - own_cpu;
  std::vector<double> latencies;
  for (StreamResult& s : results) {
    latencies.insert(latencies.end(), s.latencies_ms.begin(), s.latencies_ms.end());
    r.errors += s.errors;
    r.refill_chunks += s.refill_chunks;
    if (r.first_error.empty()) r.first_error = s.first_error;
  }
  r.chunks = latencies.size();
  r.p50_ms = Percentile(latencies, 0.5);
  r.p99_ms = Percentile(latencies, 0.99);
  return r;
}

const char* Verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

void PrintMode(int streams, const char* mode, const ModeResult& r) {
  std::printf("| %d | %s | %llu | %.1f | %.3f | %.3f | %.3f | %.3f | %llu | %llu |\n", streams,
              mode, static_cast<unsigned long long>(r.chunks), r.per_s(), r.p50_ms, r.p99_ms,
              r.server_ms_per_chunk(), r.client_ms_per_chunk(),
              static_cast<unsigned long long>(r.refill_chunks),
              static_cast<unsigned long long>(r.errors));
  if (r.errors > 0) std::fprintf(stderr, "S = %d, %s: %s\n", streams, mode, r.first_error.c_str());
  std::fflush(stdout);
}

// The server's resident set, bytes (/proc/PID/statm); 0 when unreadable.
double ResidentBytes(pid_t pid) {
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/statm").c_str(), "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? double(resident) * double(sysconf(_SC_PAGESIZE)) : 0;
}

// What the caches really take: a fresh attnserve (no allocator pages kept
// from earlier sessions), warmed by one session that wrapped its ring and
// closed; then `sessions` sessions opened one after another, each filled to
// its window. The server's resident set grows by their caches plus the
// stream's own state (gRPC's buffers, the reactor), per session.
struct MemoryResult {
  int sessions = 0;
  double before = 0, after = 0;  // resident bytes
  std::string error;
  double per_session() const { return sessions > 0 ? (after - before) / sessions : 0; }
};

MemoryResult MeasureMemory(const Options& o, const v1::ModelInfo& model, const RowPool& pool,
                           int sessions) {
  MemoryResult m;
  ServerProcess::Options server_options;
  server_options.extra_flags = o.server_flags;
  ServerProcess server(o.binary, server_options);
  auto client = client::AttentionClient::Create(server.client());
  if (!server.ok() || !client.ok()) {
    m.error = "the server did not start";
    return m;
  }
  v1::SessionOpen open;
  open.set_model(model.name());
  open.set_window(o.window);
  v1::SessionResponse reply;
  auto fill = [&](client::AttentionSession& s, uint64_t chunks) -> bool {
    for (uint64_t c = 0; c < chunks; ++c) {
      if (grpc::Status st = s.Append(pool.Chunk(c), &reply); !st.ok()) {
        m.error = st.error_message();
        return false;
      }
    }
    return true;
  };
  {
    auto warm = (*client)->OpenSession(open);
    if (!warm.ok() || !fill(**warm, 2 * o.window / o.chunk + 1)) {
      if (m.error.empty()) m.error = "cannot open the warm-up session";
      return m;
    }
    (void)(*warm)->Close();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  m.before = ResidentBytes(server.pid());
  std::vector<std::unique_ptr<client::AttentionSession>> open_sessions;
  for (int i = 0; i < sessions; ++i) {
    auto s = (*client)->OpenSession(open);
    if (!s.ok()) {
      m.error = std::string(s.status().message());
      return m;
    }
    if (!fill(**s, o.window / o.chunk)) return m;
    open_sessions.push_back(*std::move(s));
  }
  m.after = ResidentBytes(server.pid());
  m.sessions = sessions;
  for (auto& s : open_sessions) (void)s->Close();
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--seconds" && has_value) o.seconds = std::stod(argv[++i]);
    else if (flag == "--sessions" && has_value) o.levels = ParseIntList(argv[++i]);
    else if (flag == "--chunk" && has_value) o.chunk = std::stoul(argv[++i]);
    else if (flag == "--window" && has_value) o.window = std::stoul(argv[++i]);
    else if (flag == "--server-binary" && has_value) o.binary = argv[++i];
    else if (flag == "--server-flags" && has_value) {
      o.server_flags = absl::StrSplit(argv[++i], ' ', absl::SkipEmpty());
    }
    else {
      std::fprintf(stderr, "usage: session_bench [--seconds 5] [--sessions 1,16,64] [--chunk 16] "
                           "[--window 512] [--server-binary PATH] [--server-flags \"...\"]\n");
      return 2;
    }
  }
  if (o.chunk == 0 || o.window == 0 || o.window % o.chunk != 0) {
    std::fprintf(stderr, "session_bench: --window must be a positive multiple of --chunk\n");
    return 2;
  }
  std::printf("%s\n", absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ").c_str());
  ServerProcess::Options server_options;
  server_options.metrics = true;
  server_options.extra_flags = o.server_flags;
  ServerProcess server(o.binary, server_options);
  if (!server.ok()) {
    std::fprintf(stderr, "cannot start %s\n", o.binary.c_str());
    return 1;
  }
  auto client = client::AttentionClient::Create(server.client());
  v1::ListModelsResponse models;
  Setup setup{client.ok() ? client->get() : nullptr, nullptr, &o, {}};
  if (!client.ok() || !(*client)->ListModels(&models).ok()) {
    std::fprintf(stderr, "cannot list the models of %s\n", server.target().c_str());
    return 1;
  }
  for (const v1::ModelInfo& m : models.models()) {
    if (m.is_default()) setup.model = m;
  }
  const RowPool pool(setup.model.d_model(), o.chunk, o.window);
  setup.pool = &pool;
  std::printf("session_bench on %s, %u CPUs, load average %s; model %s (d_model %u, %u heads, "
              "%s, %s positions to %u), chunks of %u rows, window %u, %.0f s a level\n\n",
              attnserve::bench::CpuModel().c_str(), std::thread::hardware_concurrency(),
              attnserve::bench::LoadAverage().c_str(), setup.model.name().c_str(),
              setup.model.d_model(), setup.model.num_heads(), setup.model.precision().c_str(),
              setup.model.positional().c_str(), setup.model.max_length(), o.chunk, o.window,
              o.seconds);
  std::printf("| S | mode | chunks | chunks/s | p50 ms | p99 ms | server CPU ms/chunk | client "
              "CPU ms/chunk | refill chunks | errors |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::pair<int, std::pair<ModeResult, ModeResult>>> levels;
  uint64_t errors = 0;
  for (int s : o.levels) {
    const ModeResult session = RunMode(server, setup, s, true);
    PrintMode(s, "session", session);
    const ModeResult resend = RunMode(server, setup, s, false);
    PrintMode(s, "re-send window (Attend)", resend);
    errors += session.errors + resend.errors;
    levels.push_back({s, {session, resend}});
  }

  for (const auto& [s, r] : levels) {
    if (r.first.refill_chunks == 0) continue;
    std::printf("\nS = %d: the session's CPU per chunk counts its %llu refill chunks; charged to "
                "its %llu full-window chunks alone it is %.3f ms", s,
                static_cast<unsigned long long>(r.first.refill_chunks),
                static_cast<unsigned long long>(r.first.chunks),
                r.first.server_ms_per_measured_chunk());
  }
  std::printf("\n\n| S | server CPU per chunk: re-send / session | p50: re-send / session | "
              "chunks/s: session / re-send |\n|---|---|---|---|\n");
  for (const auto& [s, r] : levels) {
    const auto& [session, resend] = r;
    std::printf("| %d | %.1fx | %.1fx | %.1fx |\n", s,
                resend.server_ms_per_chunk() / session.server_ms_per_chunk(),
                resend.p50_ms / session.p50_ms, session.per_s() / resend.per_s());
  }
  std::printf("\n| target | measured | bound | verdict |\n|---|---|---|---|\n");
  for (const auto& [s, r] : levels) {
    if (s != 1) continue;
    const auto& [session, resend] = r;
    const double cpu = resend.server_ms_per_chunk() / session.server_ms_per_chunk();
    const double p50 = resend.p50_ms / session.p50_ms;
    std::printf("| S = 1: server CPU per chunk, re-send / session | %.1fx (%.3f / %.3f ms) | "
                ">= 10x | %s |\n", cpu, resend.server_ms_per_chunk(),
                session.server_ms_per_chunk(), Verdict(session.chunks > 0 && cpu >= 10));
    std::printf("| S = 1: p50 latency, re-send / session | %.1fx (%.3f / %.3f ms) | >= 10x | "
                "%s |\n", p50, resend.p50_ms, session.p50_ms,
                Verdict(session.chunks > 0 && p50 >= 10));
  }
  const double predicted = 2.0 * o.window * setup.model.d_model() * 4;
  std::printf("\nSession cache reserved with S sessions open (attnserve_session_cache_bytes, "
              "what the server accounts against --session-cache-bytes), against "
              "2 x window x d_model x 4 bytes = %.0f bytes a session\n\n"
              "| S | cache bytes | per session | / predicted | within 5%% |\n"
              "|---|---|---|---|---|\n",
              predicted);
  for (const auto& [s, r] : levels) {
    const std::optional<double>& bytes = r.first.cache_bytes;
    if (!bytes.has_value()) {
      std::printf("| %d | (no attnserve_session_cache_bytes in /metrics) | | | FAIL |\n", s);
      continue;
    }
    const double per = *bytes / s;
    std::printf("| %d | %.0f | %.0f | %.3f | %s |\n", s, *bytes, per, per / predicted,
                Verdict(std::abs(per / predicted - 1) <= 0.05));
  }
  const int memory_sessions = *std::max_element(o.levels.begin(), o.levels.end());
  const MemoryResult memory = MeasureMemory(o, setup.model, pool, memory_sessions);
  std::printf("\nWhat the caches take: a fresh server's resident set with %d sessions open, "
              "each filled to its window, against the same server before them (one warm-up "
              "session opened and closed first); the growth holds the caches and each "
              "stream's own state\n\n| sessions | RSS before | RSS with them | growth per "
              "session | / predicted | within 5%% |\n|---|---|---|---|---|---|\n",
              memory_sessions);
  if (!memory.error.empty()) {
    std::printf("| %d | | | (%s) | | FAIL |\n", memory_sessions, memory.error.c_str());
  } else {
    const double ratio = memory.per_session() / predicted;
    std::printf("| %d | %.1f MiB | %.1f MiB | %.0f bytes | %.3f | %s |\n", memory.sessions,
                memory.before / (1 << 20), memory.after / (1 << 20), memory.per_session(), ratio,
                Verdict(std::abs(ratio - 1) <= 0.05));
  }
  return errors == 0 ? 0 : 1;
}
