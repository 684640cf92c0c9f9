// End-to-end tests of Attention.Session (streaming sessions with a key/value
// cache) over 127.0.0.1 against an in-process AttnServer on tests/golden/data:
// every chunk's rows equal the last rows of a one-shot Attend of the whole
// stream so far with {causal, window} through the same server (outputs and
// weights); many sessions and ordinary requests share batches; the limits
// (sessions, cache bytes, max_tokens, max_length) with their codes and
// messages; bad messages; the idle timeout on a fake clock; cancellation
// freeing the reservation at once; drain answering what was received, then
// UNAVAILABLE; and the session metrics.
#include <atomic>
#include <map>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/e2e_util.h"
#include "tests/test_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr double kTolerance = 1e-5;

// One session stream from the test's side, with a 60 s deadline.
class Session {
 public:
  explicit Session(v1::Attention::Stub& stub, int64_t deadline_ms = 60000) {
    context_.set_deadline(DeadlineIn(deadline_ms));
    stream_ = stub.Session(&context_);
  }

  // Sends the open and reads its reply; false when the stream ended.
  bool Open(const v1::SessionOpen& open, v1::SessionResponse* reply) {
    v1::SessionRequest r;
    *r.mutable_open() = open;
    return stream_->Write(r) && stream_->Read(reply);
  }
  bool Append(const std::vector<float>& rows, uint32_t d, v1::SessionResponse* reply) {
    return Send(rows, d) && stream_->Read(reply);
  }
  bool Send(const std::vector<float>& rows, uint32_t d) {
    v1::SessionRequest r;
    v1::Matrix* m = r.mutable_append()->mutable_input();
    m->set_rows(static_cast<uint32_t>(rows.size() / d));
    m->set_cols(d);
    m->mutable_data()->Add(rows.begin(), rows.end());
    return stream_->Write(r);
  }
  bool Read(v1::SessionResponse* reply) { return stream_->Read(reply); }
  // Half-closes and returns the final status.
  grpc::Status Close() {
    stream_->WritesDone();
    v1::SessionResponse extra;
    while (stream_->Read(&extra)) ++unexpected_replies;
    return stream_->Finish();
  }
  grpc::Status Finish() {
    v1::SessionResponse extra;
    while (stream_->Read(&extra)) ++unexpected_replies;
    return stream_->Finish();
  }
  void Cancel() { context_.TryCancel(); }
  int unexpected_replies = 0;

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
};

// Waits (at most 10 s) until counter `family` with `labels` reaches `value`:
// a session's end is counted in its OnDone, which may run just after the
// client has seen the stream's status.
bool CounterReaches(server::Metrics& metrics, const std::string& family,
                    const std::map<std::string, std::string>& labels, double value) {
  return WaitFor([&] { return CounterValue(metrics, family, labels) == value; },
                 std::chrono::seconds(10));
}

v1::SessionOpen OpenOf(const std::string& model, uint32_t window,
                       v1::WeightsMode weights = v1::WEIGHTS_NONE, uint64_t max_tokens = 0) {
  v1::SessionOpen o;
  o.set_model(model);
  o.set_window(window);
  o.set_weights(weights);
  o.set_max_tokens(max_tokens);
  return o;
}

std::vector<float> Floats(const v1::Matrix& m) { return {m.data().begin(), m.data().end()}; }

struct StreamCase {
  std::string model;
  uint32_t d_model;
  uint32_t window;
  std::vector<uint32_t> chunks;
  v1::WeightsMode weights;
};

// Streams random rows through one session and checks every chunk against a
// one-shot Attend of the prefix with {causal, window} on the same server.
void StreamAndCompare(v1::Attention::Stub& stub, const StreamCase& c, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << c.model << " window " << c.window);
  std::mt19937 rng(seed);
  uint32_t total = 0;
  for (uint32_t n : c.chunks) total += n;
  const std::vector<float> data = RandomVector(rng, size_t{total} * c.d_model, 1.0f);
  Session s(stub);
  v1::SessionResponse opened;
  ASSERT_TRUE(s.Open(OpenOf(c.model, c.window, c.weights), &opened)) << s.Finish().error_message();
  EXPECT_EQ(opened.opened().model(), c.model);
  EXPECT_EQ(opened.opened().d_model(), c.d_model);
  EXPECT_EQ(opened.opened().window(), c.window);
  EXPECT_FALSE(opened.session_id().empty());
  uint32_t position = 0;
  for (uint32_t n : c.chunks) {
    SCOPED_TRACE(::testing::Message() << "chunk of " << n << " at " << position);
    const std::vector<float> rows(data.begin() + size_t{position} * c.d_model,
                                  data.begin() + size_t{position + n} * c.d_model);
    v1::SessionResponse got;
    ASSERT_TRUE(s.Append(rows, c.d_model, &got)) << s.Finish().error_message();
    EXPECT_EQ(got.session_id(), opened.session_id());
    EXPECT_EQ(got.position(), position);
    ASSERT_EQ(got.output().rows(), n);
    ASSERT_EQ(got.output().cols(), c.d_model);

    v1::AttendRequest whole;
    whole.set_model(c.model);
    whole.mutable_input()->set_rows(position + n);
    whole.mutable_input()->set_cols(c.d_model);
    whole.mutable_input()->mutable_data()->Add(data.begin(),
                                                data.begin() + size_t{position + n} * c.d_model);
    whole.mutable_mask()->set_causal(true);
    whole.mutable_mask()->set_window(c.window);
    whole.set_weights(c.weights);
    v1::AttendResponse want;
    ASSERT_TRUE(CallAttend(stub, whole, &want).ok());
    const std::vector<float> want_rows(
        want.output().data().begin() + size_t{position} * c.d_model, want.output().data().end());
    EXPECT_LE(RelativeL2(Floats(got.output()), want_rows), kTolerance);
    ASSERT_EQ(got.attention_size(), want.attention_size());
    const uint32_t L = position + n;
    for (int m = 0; m < got.attention_size(); ++m) {
      const v1::Matrix& g = got.attention(m);
      ASSERT_EQ(g.rows(), n);
      EXPECT_EQ(got.first_key() + g.cols(), L);
      std::vector<float> block;
      for (uint32_t r = position; r < L; ++r) {
        const auto row = want.attention(m).data().begin() + size_t{r} * L;
        block.insert(block.end(), row + got.first_key(), row + L);
        for (uint64_t j = 0; j < got.first_key(); ++j) EXPECT_EQ(row[j], 0.0f);
      }
      EXPECT_LE(RelativeL2(Floats(g), block), kTolerance) << "matrix " << m;
    }
    position += n;
  }
  EXPECT_TRUE(s.Close().ok());
  EXPECT_EQ(s.unexpected_replies, 0);
}

TEST(E2eSessionTest, EveryChunkEqualsTheOneShotAttendOfTheStreamSoFar) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  const std::vector<StreamCase> cases = {
      // learned (max_length 32), sinusoidal (64), none, rotary; W = 1, small,
      // 0 (unbounded) and longer than the stream; chunks of 1 and of many rows.
      {"mha_learned_bf16", 16, 0, {1, 5, 3, 12, 1, 10}, v1::WEIGHTS_PER_HEAD},
      {"mha_learned_bf16", 16, 1, std::vector<uint32_t>(20, 1), v1::WEIGHTS_MEAN},
      {"mha_sinusoidal_sep", 64, 7, {3, 9, 1, 20, 2, 29}, v1::WEIGHTS_PER_HEAD},
      {"mha_plain", 32, 5, {2, 11, 4, 1, 7, 40, 3}, v1::WEIGHTS_NONE},
      {"mha_plain", 32, 500, {17, 1, 30}, v1::WEIGHTS_MEAN},
      {"rotary_manual", 32, 4, {6, 6, 6, 6, 6, 6, 6, 6, 6, 6}, v1::WEIGHTS_PER_HEAD},
  };
  uint32_t seed = 1;
  for (const StreamCase& c : cases) StreamAndCompare(*stub, c, seed++);
}

// Rotary and no positions go on past max_length (64 for rotary_manual): a
// window of 8 over 400 rows. The one-shot cannot reach there, but both are
// shift-invariant: each chunk equals the last rows of the one-shot over the
// rows it can see.
TEST(E2eSessionTest, RotaryPositionsGoOnPastMaxLength) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  constexpr uint32_t d = 32, kWindow = 8, kChunk = 5;
  std::mt19937 rng(3);
  const std::vector<float> data = RandomVector(rng, 400 * d, 1.0f);
  Session s(*stub);
  v1::SessionResponse reply;
  ASSERT_TRUE(s.Open(OpenOf("rotary_manual", kWindow), &reply));
  EXPECT_EQ(reply.opened().cache_rows(), kWindow);
  EXPECT_EQ(reply.opened().max_tokens(), 0u);
  for (uint32_t p = 0; p < 400; p += kChunk) {
    const std::vector<float> rows(data.begin() + p * d, data.begin() + (p + kChunk) * d);
    ASSERT_TRUE(s.Append(rows, d, &reply)) << "at " << p << ": " << s.Finish().error_message();
    const uint32_t seen = std::min(p, kWindow);
    v1::AttendRequest tail;
    tail.set_model("rotary_manual");
    tail.mutable_input()->set_rows(seen + kChunk);
    tail.mutable_input()->set_cols(d);
    tail.mutable_input()->mutable_data()->Add(data.begin() + (p - seen) * d,
                                               data.begin() + (p + kChunk) * d);
    tail.mutable_mask()->set_causal(true);
    tail.mutable_mask()->set_window(kWindow);
    v1::AttendResponse want;
    ASSERT_TRUE(CallAttend(*stub, tail, &want).ok());
    const std::vector<float> last(want.output().data().begin() + seen * d,
                                  want.output().data().end());
    EXPECT_LE(RelativeL2(Floats(reply.output()), last), kTolerance) << "at " << p;
  }
  EXPECT_TRUE(s.Close().ok());
}

// Many sessions at once, with ordinary Attend calls among them, and a queue
// delay that makes them share batches: every chunk still equals the one-shot
// (checked against a one-shot computed after each stream), and chunks of
// different sessions did run in one batch.
TEST(E2eSessionTest, ManySessionsAndRequestsShareBatchesAndStayExact) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_delay_us = 3000;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  constexpr int kSessions = 8, kChunks = 12;
  constexpr uint32_t d = 32, kChunk = 4, kWindow = 10;
  std::atomic<int> shared_batches{0};
  std::vector<std::vector<float>> outputs(kSessions), inputs(kSessions);
  std::vector<std::thread> threads;
  for (int t = 0; t < kSessions; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Attention::NewStub(LoopbackChannel(server->port(), t % 3));
      std::mt19937 rng(100 + t);
      inputs[t] = RandomVector(rng, kChunks * kChunk * d, 1.0f);
      Session s(*stub);
      v1::SessionResponse reply;
      if (!s.Open(OpenOf("mha_plain", kWindow), &reply)) return;
      for (int c = 0; c < kChunks; ++c) {
        const std::vector<float> rows(inputs[t].begin() + c * kChunk * d,
                                      inputs[t].begin() + (c + 1) * kChunk * d);
        if (!s.Append(rows, d, &reply)) return;
        if (reply.stats().batch_size() > 1) shared_batches.fetch_add(1);
        outputs[t].insert(outputs[t].end(), reply.output().data().begin(),
                          reply.output().data().end());
        if (c % 3 == 0) {  // an ordinary request of this client between chunks
          v1::AttendResponse plain;
          v1::AttendRequest r = RandomRequest(rng, "mha_plain", d, 1 + c);
          EXPECT_TRUE(CallAttend(*stub, r, &plain).ok());
        }
      }
      EXPECT_TRUE(s.Close().ok());
    });
  }
  for (std::thread& t : threads) t.join();
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  for (int t = 0; t < kSessions; ++t) {
    ASSERT_EQ(outputs[t].size(), size_t{kChunks} * kChunk * d) << "session " << t;
    v1::AttendRequest whole;
    whole.set_model("mha_plain");
    whole.mutable_input()->set_rows(kChunks * kChunk);
    whole.mutable_input()->set_cols(d);
    whole.mutable_input()->mutable_data()->Add(inputs[t].begin(), inputs[t].end());
    whole.mutable_mask()->set_causal(true);
    whole.mutable_mask()->set_window(kWindow);
    v1::AttendResponse want;
    ASSERT_TRUE(CallAttend(*stub, whole, &want).ok());
    EXPECT_LE(RelativeL2(outputs[t], Floats(want.output())), kTolerance) << "session " << t;
  }
  EXPECT_GT(shared_batches.load(), 0);
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_session_appends_total",
                         {{"model", "mha_plain"}}),
            kSessions * kChunks);
  EXPECT_TRUE(CounterReaches(server->metrics(), "attnserve_sessions_ended_total",
                             {{"reason", "closed"}}, kSessions));
}

TEST(E2eSessionTest, LimitsAreEnforcedWithTheirCodesAndNothingIsEvicted) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.max_sessions = 2;
  // rotary_manual, fp32: 2 x 32 x 4 = 256 bytes a row.
  options.session_cache_bytes = 256 * 100;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  server::Metrics& metrics = server->metrics();
  v1::SessionResponse reply;

  Session a(*stub);
  ASSERT_TRUE(a.Open(OpenOf("rotary_manual", 60), &reply));
  EXPECT_EQ(reply.opened().cache_rows(), 60u);
  EXPECT_EQ(reply.opened().cache_bytes(), 60u * 256);
  EXPECT_EQ(GaugeValue(metrics, "attnserve_session_cache_bytes"), 60 * 256);
  EXPECT_EQ(GaugeValue(metrics, "attnserve_sessions_active"), 1);
  {  // 60 + 41 rows > 100: refused, and the open session is untouched
    Session b(*stub);
    EXPECT_FALSE(b.Open(OpenOf("rotary_manual", 41), &reply));
    const grpc::Status st = b.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(st.error_message(), HasSubstr("--session-cache-bytes"));
  }
  Session c(*stub);
  ASSERT_TRUE(c.Open(OpenOf("rotary_manual", 40), &reply));
  {  // a third session: over --max-sessions
    Session d(*stub);
    EXPECT_FALSE(d.Open(OpenOf("rotary_manual", 1), &reply));
    const grpc::Status st = d.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(st.error_message(), HasSubstr("--max-sessions"));
  }
  std::mt19937 rng(1);
  ASSERT_TRUE(a.Append(RandomVector(rng, 3 * 32, 1.0f), 32, &reply));  // a still works
  EXPECT_TRUE(c.Close().ok());
  EXPECT_TRUE(WaitFor([&] { return GaugeValue(metrics, "attnserve_sessions_active") == 1; },
                      std::chrono::seconds(10)));
  EXPECT_EQ(GaugeValue(metrics, "attnserve_session_cache_bytes"), 60 * 256);
  EXPECT_TRUE(a.Close().ok());
  EXPECT_TRUE(WaitFor([&] { return GaugeValue(metrics, "attnserve_session_cache_bytes") == 0; },
                      std::chrono::seconds(10)));

  {  // max_tokens: 10 rows in all
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("rotary_manual", 4, v1::WEIGHTS_NONE, 10), &reply));
    EXPECT_EQ(reply.opened().max_tokens(), 10u);
    ASSERT_TRUE(s.Append(RandomVector(rng, 8 * 32, 1.0f), 32, &reply));
    EXPECT_FALSE(s.Append(RandomVector(rng, 3 * 32, 1.0f), 32, &reply));
    const grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_THAT(st.error_message(), HasSubstr("max_tokens"));
  }
  {  // max_tokens below the window: the cache is max_tokens rows, and serves them all
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("mha_plain", 512, v1::WEIGHTS_NONE, 20), &reply));
    EXPECT_EQ(reply.opened().cache_rows(), 20u);
    EXPECT_EQ(reply.opened().cache_bytes(), 20u * 2 * 32 * 4);
    ASSERT_TRUE(s.Append(RandomVector(rng, 12 * 32, 1.0f), 32, &reply));
    ASSERT_TRUE(s.Append(RandomVector(rng, 8 * 32, 1.0f), 32, &reply)) << s.Finish().error_message();
    EXPECT_FALSE(s.Append(RandomVector(rng, 1 * 32, 1.0f), 32, &reply));
    EXPECT_EQ(s.Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
  }
  {  // learned positions end at max_length 32, whatever the window
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("mha_learned_bf16", 4), &reply));
    EXPECT_EQ(reply.opened().max_tokens(), 32u);
    ASSERT_TRUE(s.Append(RandomVector(rng, 30 * 16, 1.0f), 16, &reply));
    EXPECT_FALSE(s.Append(RandomVector(rng, 3 * 16, 1.0f), 16, &reply));
    EXPECT_EQ(s.Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
  }
  {  // window 0 keeps every row: the cache is max_tokens rows
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("rotary_manual", 0, v1::WEIGHTS_NONE, 50), &reply));
    EXPECT_EQ(reply.opened().cache_rows(), 50u);
    EXPECT_TRUE(s.Close().ok());
  }
}

TEST(E2eSessionTest, BadMessagesEndTheSessionWithClearErrors) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  v1::SessionResponse reply;
  std::mt19937 rng(2);
  {  // an append first
    Session s(*stub);
    EXPECT_TRUE(s.Send(RandomVector(rng, 32, 1.0f), 32));
    EXPECT_FALSE(s.Read(&reply));
    const grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("must be `open`"));
  }
  {  // unknown model
    Session s(*stub);
    EXPECT_FALSE(s.Open(OpenOf("nope", 4), &reply));
    EXPECT_EQ(s.Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {  // wrong width, then nothing more is read
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("mha_plain", 4), &reply));
    EXPECT_FALSE(s.Append(RandomVector(rng, 3 * 31, 1.0f), 31, &reply));
    const grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("d_model = 32"));
  }
  {  // a NaN
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("mha_plain", 4), &reply));
    std::vector<float> rows = RandomVector(rng, 2 * 32, 1.0f);
    rows[40] = std::nanf("");
    EXPECT_FALSE(s.Append(rows, 32, &reply));
    const grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("not finite"));
  }
  {  // a second open
    Session s(*stub);
    ASSERT_TRUE(s.Open(OpenOf("mha_plain", 4), &reply));
    EXPECT_FALSE(s.Open(OpenOf("mha_plain", 4), &reply));
    EXPECT_EQ(s.Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // undecodable bytes
    grpc::GenericStub generic(LoopbackChannel(server->port()));
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(10000));
    grpc::CompletionQueue cq;
    // Through the generated stub's raw form: write garbage as a message.
    auto raw = generic.PrepareCall(&context, "/attnserve.v1.Attention/Session", &cq);
    raw->StartCall(reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    raw->Write(ToByteBuffer("\xff\xff\xff"), reinterpret_cast<void*>(2));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    grpc::ByteBuffer incoming;
    raw->Read(&incoming, reinterpret_cast<void*>(3));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_FALSE(ok);  // no reply: the stream ends
    grpc::Status st;
    raw->Finish(&st, reinterpret_cast<void*>(4));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("SessionRequest"));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
  EXPECT_TRUE(CounterReaches(server->metrics(), "attnserve_sessions_ended_total",
                             {{"reason", "error"}}, 3));  // the three that had opened
  EXPECT_TRUE(WaitFor([&] { return GaugeValue(server->metrics(), "attnserve_sessions_active") == 0; },
                      std::chrono::seconds(10)));
}

TEST(E2eSessionTest, AnIdleSessionIsEndedWithAMessageOnTheFakeClock) {
  server::FakeClock clock;
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.session_clock = &clock;
  options.session_idle_timeout_s = 60;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(4);
  v1::SessionResponse reply;
  Session s(*stub);
  ASSERT_TRUE(s.Open(OpenOf("mha_plain", 8), &reply));
  clock.Advance(59'000'000);
  ASSERT_TRUE(s.Append(RandomVector(rng, 2 * 32, 1.0f), 32, &reply));  // activity: restarts
  clock.Advance(59'000'000);
  ASSERT_TRUE(s.Append(RandomVector(rng, 2 * 32, 1.0f), 32, &reply));
  EXPECT_EQ(reply.position(), 2u);
  clock.Advance(61'000'000);
  EXPECT_FALSE(s.Read(&reply));
  const grpc::Status st = s.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(st.error_message(), HasSubstr("idle for 61 s"));
  EXPECT_THAT(st.error_message(), HasSubstr("after 4 rows"));
  EXPECT_TRUE(WaitFor([&] { return GaugeValue(server->metrics(), "attnserve_sessions_active") == 0; },
                      std::chrono::seconds(10)));
  EXPECT_EQ(GaugeValue(server->metrics(), "attnserve_session_cache_bytes"), 0);
  EXPECT_TRUE(CounterReaches(server->metrics(), "attnserve_sessions_ended_total",
                             {{"reason", "idle"}}, 1));
}

TEST(E2eSessionTest, CancellingTheStreamFreesTheCacheAtOnce) {
  auto server = StartLoopbackServer(LoopbackOptions(GoldenRepository()));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  server::Metrics& metrics = server->metrics();
  const double before = GaugeValue(metrics, "attnserve_session_cache_bytes");
  EXPECT_EQ(before, 0);
  std::mt19937 rng(5);
  v1::SessionResponse reply;
  Session s(*stub);
  ASSERT_TRUE(s.Open(OpenOf("mha_plain", 100), &reply));
  ASSERT_TRUE(s.Append(RandomVector(rng, 10 * 32, 1.0f), 32, &reply));
  EXPECT_EQ(GaugeValue(metrics, "attnserve_session_cache_bytes"), 100 * 2 * 32 * 4);
  s.Cancel();
  EXPECT_TRUE(WaitFor([&] { return GaugeValue(metrics, "attnserve_session_cache_bytes") == before; },
                      std::chrono::seconds(10)));
  EXPECT_EQ(GaugeValue(metrics, "attnserve_sessions_active"), 0);
  EXPECT_TRUE(CounterReaches(metrics, "attnserve_sessions_ended_total", {{"reason", "cancelled"}}, 1));
}

// SIGTERM's drain: a chunk received (waiting in its batch's queue) is
// answered, then the session ends UNAVAILABLE; the drain does not wait for
// the client to close.
TEST(E2eSessionTest, DrainAnswersTheChunksReceivedThenEndsSessionsUnavailable) {
  server::ServerOptions options = LoopbackOptions(GoldenRepository());
  options.batching.max_queue_delay_us = 2'000'000;  // the chunk waits until the drain flushes
  options.batching.max_batch_size = 64;
  auto server = StartLoopbackServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::Attention::NewStub(LoopbackChannel(server->port()));
  std::mt19937 rng(6);
  v1::SessionResponse reply;
  Session s(*stub);
  ASSERT_TRUE(s.Open(OpenOf("mha_plain", 8), &reply));
  ASSERT_TRUE(s.Send(RandomVector(rng, 3 * 32, 1.0f), 32));
  auto model = server->registry().Find("mha_plain");
  ASSERT_TRUE(WaitFor([&] { return model->batcher->queue_depth() == 1; },
                      std::chrono::seconds(10)));
  model.reset();
  const auto start = std::chrono::steady_clock::now();
  std::thread drain([&] { EXPECT_TRUE(server->Drain()); });
  ASSERT_TRUE(s.Read(&reply));  // the chunk received before the drain
  EXPECT_EQ(reply.output().rows(), 3u);
  EXPECT_FALSE(s.Read(&reply));
  const grpc::Status st = s.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(st.error_message(), HasSubstr("draining"));
  drain.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_TRUE(CounterReaches(server->metrics(), "attnserve_sessions_ended_total",
                             {{"reason", "draining"}}, 1));
}

}  // namespace
}  // namespace attnserve::testing
