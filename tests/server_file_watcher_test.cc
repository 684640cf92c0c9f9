// FileWatcher: changes are noticed on the injected clock's schedule (no
// sleeps), including in-place rewrites and renames over the file.
#include <filesystem>
#include <fstream>
#include <memory>
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

// Stop joins the thread: the clock may go (as the server's does while gRPC
// still holds the access control that owns the watcher), a change is no
// longer reported by the thread, and CheckNow still works.
TEST(FileWatcherTest, StopEndsTheThreadAndLeavesCheckNow) {
  const std::string path = ::testing::TempDir() + "stopped_" + std::to_string(getpid());
  std::ofstream(path) << "one";
  auto clock = std::make_unique<FakeClock>();
  Recorder recorder;
  FileWatcher watcher(path, /*interval_us=*/1000, clock.get(),
                      [&](const absl::StatusOr<std::string>& c) { recorder.Add(c); });
  clock->BlockUntilWaitingAtNow();  // the thread is running
  watcher.Stop();
  watcher.Stop();  // idempotent
  std::ofstream(path, std::ios::trunc) << "two!";
  clock->Advance(5000);  // nobody waits on it any more
  clock.reset();         // a thread still using it would read freed memory (ASan, TSan)
  EXPECT_TRUE(recorder.seen().empty());
  EXPECT_TRUE(watcher.CheckNow());
  EXPECT_EQ(recorder.seen(), std::vector<std::string>{"two!"});
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace attnserve::server
