// Canaries for `make tsan` (built only with -DATTN_SANITIZE=thread): races
// that must still be reported with everything make tsan adds in place — the
// annotations of tests/tsan/ and the suppressions of tests/tsan.supp. A
// ThreadSanitizer setup that hid them would pass every other suite while
// checking nothing; these fail then.
//
// Each canary runs in a child process (this binary again, with
// ATTN_TSAN_CANARY naming the race to commit and the parent's TSAN_OPTIONS):
// the child commits the race and the parent expects TSan's report, naming
// the function, and its exit code (66).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kTsanExitCode = 66;  // TSan's default exitcode when it reported

// This test binary again, running only `test`, committing `canary`.
RunResult RunCanary(const std::string& test, const std::string& canary) {
  return RunToExit({"/proc/self/exe", "--gtest_filter=TsanCanaryTest." + test},
                   {"ATTN_TSAN_CANARY=" + canary}, std::chrono::seconds(60));
}

// Runs `test` committing `canary` and expects it to end as TSan ends a run
// that reported, with a data race naming `function`; returns its output.
std::string ExpectRaceReported(const std::string& test, const std::string& canary,
                               const std::string& function) {
  const RunResult run = RunCanary(test, canary);
  EXPECT_EQ(run.exit_code, kTsanExitCode) << run.output;
  EXPECT_THAT(run.output, HasSubstr("WARNING: ThreadSanitizer: data race"));
  EXPECT_THAT(run.output, HasSubstr(function));
  return run.output;
}

bool InChild(const char* canary) {
  const char* wanted = std::getenv("ATTN_TSAN_CANARY");
  return wanted != nullptr && std::strcmp(wanted, canary) == 0;
}

// Two of our threads, one memcpy writing a buffer the other's memcpy reads,
// nothing between them: the libc call is intercepted from our code (what
// ignore_noninstrumented_modules would have lost). The size is opaque: GCC
// expands a memcpy of known size into plain moves after the TSan pass, which
// TSan then never sees.
__attribute__((noinline)) void CopyInto(char* dst, const char* src, size_t n) {
  volatile size_t opaque = n;
  std::memcpy(dst, src, opaque);
}

TEST(TsanCanaryTest, MemcpyRaceBetweenOurThreads) {
  if (InChild("memcpy")) {
    static char shared[256];
    char a[256] = {1}, b[256];
    std::atomic<bool> go{false};
    std::thread writer([&] {
      while (!go.load(std::memory_order_relaxed)) {
      }
      CopyInto(shared, a, sizeof(shared));
    });
    go.store(true, std::memory_order_relaxed);
    CopyInto(b, shared, sizeof(shared));
    writer.join();
    return;
  }
  ExpectRaceReported("MemcpyRaceBetweenOurThreads", "memcpy", "CopyInto");
}

// Two threads writing one variable, each under its own absl::Mutex: the
// interposed mutexes must not order different mutexes.
__attribute__((noinline)) void IncrementUnder(absl::Mutex* mu, long* counter) {
  absl::MutexLock lock(mu);
  ++*counter;
}

TEST(TsanCanaryTest, DifferentAbslMutexesDoNotOrder) {
  if (InChild("absl")) {
    absl::Mutex first, second;
    long counter = 0;
    std::thread other([&] {
      for (int i = 0; i < 1000; ++i) IncrementUnder(&second, &counter);
    });
    for (int i = 0; i < 1000; ++i) IncrementUnder(&first, &counter);
    other.join();
    return;
  }
  ExpectRaceReported("DifferentAbslMutexesDoNotOrder", "absl", "IncrementUnder");
}

// A real gRPC callback server whose reactor is finished from a thread of
// ours, which then writes the reactor after Finish; OnDone reads the field.
// gRPC orders OnDone after Finish, not after what the thread did after
// calling it, so this is a race through gRPC that the annotations (keyed on
// Finish's tag) must not hide.
class RacyReactor : public grpc::ServerGenericBidiReactor {
 public:
  RacyReactor() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    // The write and the read overlap in time: this thread does nothing
    // between its write and OnDone's read (relaxed flags order nothing), so
    // only an edge the annotations invented could hide the race.
    finisher_ = std::thread([this] {
      Finish(grpc::Status::OK);
      WriteAfterFinish();
      written_.store(true, std::memory_order_relaxed);
      while (!read_.load(std::memory_order_relaxed)) std::this_thread::yield();
    });
  }
  __attribute__((noinline)) void WriteAfterFinish() { value_ = 42; }
  __attribute__((noinline)) int ReadInOnDone() { return value_; }
  void OnDone() override {
    while (!written_.load(std::memory_order_relaxed)) std::this_thread::yield();
    seen_ = ReadInOnDone();  // used: a read whose value is unused is optimized away
    read_.store(true, std::memory_order_relaxed);
    finisher_.join();
    delete this;
  }

 private:
  grpc::ByteBuffer request_;
  std::thread finisher_;
  std::atomic<bool> written_{false};
  std::atomic<bool> read_{false};
  // Apart from the flags: TSan keeps four accesses per 8-byte word, and the
  // spinning loads of a flag in the same word would evict the write.
  alignas(64) int value_ = 0;
  alignas(64) volatile int seen_ = 0;
};

class RacyService : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new RacyReactor;
  }
};

TEST(TsanCanaryTest, WriteAfterFinishRacesWithOnDone) {
  if (InChild("grpc")) {
    RacyService service;
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterCallbackGenericService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    ASSERT_NE(server, nullptr);
    grpc::GenericStub stub(LoopbackChannel(port));
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(10000));
    const grpc::ByteBuffer request = ToByteBuffer("x");
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/canary.Racy/Call", grpc::StubOptions(), &request, &response,
                   [&done](grpc::Status s) { done.set_value(std::move(s)); });
    EXPECT_TRUE(done.get_future().get().ok());
    server->Shutdown();
    server->Wait();
    return;
  }
  const std::string output =
      ExpectRaceReported("WriteAfterFinishRacesWithOnDone", "grpc", "WriteAfterFinish");
  EXPECT_THAT(output, HasSubstr("ReadInOnDone"));
}

}  // namespace
}  // namespace attnserve::testing
