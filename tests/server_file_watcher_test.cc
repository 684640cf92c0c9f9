// FileWatcher: changes are noticed on the injected clock's schedule (no
// sleeps), including in-place rewrites and renames over the file.
#include <filesystem>
#include <fstream>
#include <mutex>
#include <vector>

#include <gtest/gtest.h>

#include "server/file_watcher.h"

namespace attnserve::server {
namespace {

class Recorder {
 public:
  void Add(const absl::StatusOr<std::string>& c) {
    std::lock_guard<std::mutex> lock(mu_);
    seen_.push_back(c.ok() ? *c : "error:" + std::string(c.status().message()));
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> seen_;
};

TEST(FileWatcherTest, ReportsRewritesRenamesAndRemovalOnlyWhenTheClockSaysSo) {
  const std::string path = ::testing::TempDir() + "watched_" + std::to_string(getpid());
  std::ofstream(path) << "one";
  FakeClock clock;
  Recorder recorder;
  FileWatcher watcher(path, /*interval_us=*/1000, &clock,
                      [&](const absl::StatusOr<std::string>& c) { recorder.Add(c); });
  EXPECT_FALSE(watcher.CheckNow());  // unchanged since construction
  std::ofstream(path, std::ios::trunc) << "two!";
  // The thread checks only once the interval has passed.
  clock.BlockUntilWaitingAtNow();
  EXPECT_TRUE(recorder.seen().empty());
  clock.Advance(999);
  clock.BlockUntilWaitingAtNow();
  EXPECT_TRUE(recorder.seen().empty());
  clock.Advance(1);
  clock.BlockUntilWaitingAtNow();  // waiting again: the check has run
  EXPECT_EQ(recorder.seen(), std::vector<std::string>{"two!"});

  // A rename over the file (new inode), then removal, via CheckNow.
  std::ofstream(path + ".new") << "six!";
  std::filesystem::rename(path + ".new", path);
  EXPECT_TRUE(watcher.CheckNow());
  std::filesystem::remove(path);
  EXPECT_TRUE(watcher.CheckNow());
  EXPECT_FALSE(watcher.CheckNow());
  const auto seen = recorder.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1], "six!");
  EXPECT_EQ(seen[2].rfind("error:cannot read", 0), 0u) << seen[2];
}

}  // namespace
}  // namespace attnserve::server
