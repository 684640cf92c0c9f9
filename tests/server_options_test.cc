// What --threads 0 resolves to: the CPUs of the process's affinity mask,
// capped by its cgroup's CPU quota (a container's CPU limit), rounded up.
#include <sched.h>

#include <thread>

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
