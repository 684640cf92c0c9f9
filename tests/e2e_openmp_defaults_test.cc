// The attnserve binary's OpenMP wait policy (server/openmp_defaults.h): it
// runs with GOMP_SPINCOUNT=3000 unless the operator set GOMP_SPINCOUNT or
// OMP_WAIT_POLICY, keeps an operator's setting untouched, says which one it
// runs with on its startup line, and keeps its PID through the re-execution
// (what a supervisor or `kill` holds).
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// The environment of process `pid`, one "NAME=value" per entry.
std::vector<std::string> EnvironmentOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> entries;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    entries.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return entries;
}

class E2eOpenMpDefaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The children inherit this process's environment: start from neither
    // setting (this test program's own OpenMP runtime has read them already).
    unsetenv("GOMP_SPINCOUNT");
    unsetenv("OMP_WAIT_POLICY");
  }

  // Starts the binary with `env` added; returns its startup line (empty on
  // failure, with the output reported).
  std::string Start(const std::vector<std::string>& env) {
    auto child = ChildProcess::Start({ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                      "--metrics-port", "0", "--model-repository",
                                      GoldenRepository()},
                                     env);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return "";
    child_ = *std::move(child);
    const auto line = child_->WaitForLine(" starting: ", std::chrono::seconds(60));
    EXPECT_TRUE(line.has_value()) << child_->output();
    EXPECT_GT(WaitForServingPort(*child_), 0) << child_->output();
    return line.value_or("");
  }

  void TearDown() override {
    if (child_ == nullptr) return;
    child_->Signal(SIGTERM);
    const auto status = child_->WaitExit(std::chrono::seconds(30));
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << child_->output();
  }

  std::unique_ptr<ChildProcess> child_;
};

TEST_F(E2eOpenMpDefaultsTest, RunsWithAShortSpinByDefaultUnderTheSamePid) {
  const std::string line = Start({});
  ASSERT_THAT(line, Not(IsEmpty()));
  EXPECT_THAT(line, HasSubstr("OpenMP wait GOMP_SPINCOUNT=3000 (attnserve's default)"));
  // The PID the test started is the one serving, with the setting in its
  // environment (libgomp read it there when the binary started again).
  EXPECT_THAT(EnvironmentOf(child_->pid()), Contains("GOMP_SPINCOUNT=3000"));
  // Under its own name, not /proc/self/exe's ("exe"): what ps and top show.
  std::ifstream comm("/proc/" + std::to_string(child_->pid()) + "/comm");
  std::string name;
  std::getline(comm, name);
  EXPECT_EQ(name, "attnserve");
}

TEST_F(E2eOpenMpDefaultsTest, KeepsTheOperatorsSpinCount) {
  const std::string line = Start({"GOMP_SPINCOUNT=12345"});
  ASSERT_THAT(line, Not(IsEmpty()));
  EXPECT_THAT(line, HasSubstr("OpenMP wait GOMP_SPINCOUNT=12345"));
  EXPECT_THAT(line, Not(HasSubstr("attnserve's default")));
  const std::vector<std::string> env = EnvironmentOf(child_->pid());
  EXPECT_THAT(env, Contains("GOMP_SPINCOUNT=12345"));
  EXPECT_THAT(env, Not(Contains(StartsWith("ATTN_OPENMP_DEFAULT_APPLIED="))));
}

TEST_F(E2eOpenMpDefaultsTest, AWaitPolicyLeavesTheSpinCountToLibgomp) {
  const std::string line = Start({"OMP_WAIT_POLICY=passive"});
  ASSERT_THAT(line, Not(IsEmpty()));
  EXPECT_THAT(line, HasSubstr("OpenMP wait OMP_WAIT_POLICY=passive"));
  EXPECT_THAT(EnvironmentOf(child_->pid()), Not(Contains(StartsWith("GOMP_SPINCOUNT="))));
}

}  // namespace
}  // namespace attnserve::testing
