// What --threads 0 resolves to: the CPUs of the process's affinity mask,
// capped by its cgroup's CPU quota (a container's CPU limit), rounded up.
#include <sched.h>

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/options.h"

namespace attnserve::server {
namespace {

TEST(AvailableCpusTest, CgroupV2QuotaIsRoundedUpAndMaxMeansNone) {
  EXPECT_EQ(CpusFromCgroupV2("200000 100000"), 2);
  EXPECT_EQ(CpusFromCgroupV2("150000 100000\n"), 2);
  EXPECT_EQ(CpusFromCgroupV2("50000 100000"), 1);
  EXPECT_EQ(CpusFromCgroupV2("max 100000"), 0);
  EXPECT_EQ(CpusFromCgroupV2(""), 0);
  EXPECT_EQ(CpusFromCgroupV2("garbage"), 0);
}

TEST(AvailableCpusTest, CgroupV1QuotaIsRoundedUpAndMinusOneMeansNone) {
  EXPECT_EQ(CpusFromCgroupV1(400000, 100000), 4);
  EXPECT_EQ(CpusFromCgroupV1(250000, 100000), 3);
  EXPECT_EQ(CpusFromCgroupV1(-1, 100000), 0);
  EXPECT_EQ(CpusFromCgroupV1(100000, 0), 0);
}

TEST(AvailableCpusTest, NeverMoreThanTheAffinityMaskAndAtLeastOne) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cpus = AvailableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, CPU_COUNT(&set));
  // Pinned to one CPU, the process has one CPU to use.
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) {
      CPU_SET(c, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  EXPECT_EQ(AvailableCpus(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof set, &set), 0);
}

}  // namespace
}  // namespace attnserve::server

namespace attnserve::server {
namespace {

TEST(MemoryLimitTest, CgroupLimitsInBytesAndNoLimitIsZero) {
  EXPECT_EQ(MemoryLimitFromCgroup("2147483648\n"), int64_t{2} << 30);  // v2 or v1
  EXPECT_EQ(MemoryLimitFromCgroup("max"), 0);                          // v2: no limit
  EXPECT_EQ(MemoryLimitFromCgroup("9223372036854771712"), 0);          // v1: no limit
  EXPECT_EQ(MemoryLimitFromCgroup(""), 0);
  EXPECT_EQ(MemoryLimitFromCgroup("garbage"), 0);
  EXPECT_GE(DefaultMaxMemoryBytes(), int64_t{1} << 20);
}

// ParseServerOptions on `args` (after the program name).
absl::Status Parse(std::vector<const char*> args, ServerOptions* options) {
  args.insert(args.begin(), "attnserve");
  bool exit_now = false;
  std::string help;
  return ParseServerOptions(static_cast<int>(args.size()), args.data(), options, &exit_now,
                            &help);
}

TEST(MemoryFlagsTest, SizesTakeBinarySuffixesAndTheWindowMustBePositive) {
  ServerOptions o;
  ASSERT_TRUE(Parse({"--max-memory-bytes", "128Mi", "--stream-window", "3"}, &o).ok());
  EXPECT_EQ(o.max_memory_bytes, int64_t{128} << 20);
  EXPECT_EQ(o.stream_window, 3u);
  ASSERT_TRUE(Parse({"--max-memory-bytes", "4096"}, &o).ok());
  EXPECT_EQ(o.max_memory_bytes, 4096);
  ServerOptions defaults;
  ASSERT_TRUE(Parse({}, &defaults).ok());
  EXPECT_EQ(defaults.max_memory_bytes, 0);  // DefaultMaxMemoryBytes() at startup
  EXPECT_EQ(defaults.stream_window, 8u);
  const absl::Status zero = Parse({"--stream-window", "0"}, &o);
  EXPECT_EQ(zero.message(), "--stream-window must be >= 1; was 0");
  EXPECT_FALSE(Parse({"--max-memory-bytes", "lots"}, &o).ok());
}

TEST(MemoryFlagsTest, StreamWindowBytesTakesSuffixesDefaultsTo64MiBAndMustBePositive) {
  ServerOptions defaults;
  ASSERT_TRUE(Parse({}, &defaults).ok());
  EXPECT_EQ(defaults.stream_window_bytes, int64_t{64} << 20);
  ServerOptions o;
  ASSERT_TRUE(Parse({"--stream-window-bytes", "16Mi"}, &o).ok());
  EXPECT_EQ(o.stream_window_bytes, int64_t{16} << 20);
  ASSERT_TRUE(Parse({"--stream-window-bytes", "1"}, &o).ok());
  EXPECT_EQ(o.stream_window_bytes, 1);
  EXPECT_EQ(Parse({"--stream-window-bytes", "0"}, &o).message(),
            "--stream-window-bytes must be >= 1; was 0");
  EXPECT_FALSE(Parse({"--stream-window-bytes", "-5"}, &o).ok());
  EXPECT_FALSE(Parse({"--stream-window-bytes", "lots"}, &o).ok());
}

TEST(ModelControlFlagsTest, ModesPollIntervalAndTheirErrors) {
  ServerOptions defaults;
  ASSERT_TRUE(Parse({}, &defaults).ok());
  EXPECT_EQ(defaults.model_control, ModelControl::kNone);
  EXPECT_DOUBLE_EQ(defaults.repository_poll_s, 5.0);
  ServerOptions o;
  ASSERT_TRUE(Parse({"--model-control", "poll", "--repository-poll-s", "0.2"}, &o).ok());
  EXPECT_EQ(o.model_control, ModelControl::kPoll);
  EXPECT_DOUBLE_EQ(o.repository_poll_s, 0.2);
  ASSERT_TRUE(Parse({"--model-control=explicit"}, &o).ok());
  EXPECT_EQ(o.model_control, ModelControl::kExplicit);
  EXPECT_EQ(Parse({"--model-control", "auto"}, &o).message(),
            "--model-control must be none, poll or explicit; was 'auto'");
  for (const char* bad : {"0", "0.05", "-1", "86401", "nan"}) {
    SCOPED_TRACE(bad);
    const absl::Status s = Parse({"--repository-poll-s", bad}, &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Parse({"--repository-poll-s", "0"}, &o).message(),
            "--repository-poll-s must be in [0.1, 86400]; was 0.000000");
}

}  // namespace
}  // namespace attnserve::server
