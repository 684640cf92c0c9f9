// The version and git revision of the attnserve binary: `--version` prints
// them and exits 0, the startup log names them, and a build from a git
// checkout knows its revision.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <regex>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/version.h"
#include "tests/e2e_util.h"

namespace attnserve::testing {
namespace {

using ::testing::HasSubstr;

TEST(E2eVersionTest, VersionPrintsVersionAndRevisionAndExitsZero) {
  const RunResult run = RunToExit({ATTNSERVE_BINARY, "--version"}, {}, std::chrono::seconds(10));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output, std::string(server::VersionString()) + "\n");
  EXPECT_TRUE(std::regex_match(
      run.output, std::regex(R"(attnserve \d+\.\d+\.\d+ \(git ([0-9a-f]{7,}(-dirty)?|unknown)\)\n)")))
      << run.output;
  // --version wins over everything else on the command line, even a bad flag value.
  EXPECT_EQ(RunToExit({ATTNSERVE_BINARY, "--port", "99999999", "--version"}, {},
                      std::chrono::seconds(10)).exit_code, 0);
}

TEST(E2eVersionTest, ABuildFromAGitCheckoutKnowsItsRevision) {
  const RunResult git = RunToExit(
      {"/usr/bin/env", "git", "-C", ATTNSERVE_SOURCE_DIR, "rev-parse", "--short", "HEAD"}, {},
      std::chrono::seconds(10));
  if (git.exit_code != 0) GTEST_SKIP() << "the source tree is not a git checkout: " << git.output;
  EXPECT_NE(std::string(server::GitRevision()), "unknown");
  EXPECT_TRUE(std::regex_match(server::GitRevision(), std::regex("[0-9a-f]{7,}(-dirty)?")))
      << server::GitRevision();
}

TEST(E2eVersionTest, StartupLogNamesTheVersion) {
  auto child = ChildProcess::Start({ATTNSERVE_BINARY, "--host", "127.0.0.1", "--port", "0",
                                    "--metrics-port", "0", "--model-repository",
                                    GoldenRepository()});
  ASSERT_TRUE(child.ok()) << child.status();
  const auto line = (*child)->WaitForLine(std::string(server::VersionString()) + " starting",
                                          std::chrono::seconds(60));
  EXPECT_TRUE(line.has_value()) << (*child)->output();
  (*child)->Signal(SIGTERM);
  const auto status = (*child)->WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << (*child)->output();
}

}  // namespace
}  // namespace attnserve::testing
