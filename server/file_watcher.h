// FileWatcher: notices when a file changes (its inode, size or modification
// time; a Kubernetes Secret or ConfigMap update swaps a symlink, which changes
// the inode) and hands the new contents to a callback, checking every
// interval_us of an injected Clock on its own thread. Thread-safe.
#ifndef ATTNSERVE_SERVER_FILE_WATCHER_H_
#define ATTNSERVE_SERVER_FILE_WATCHER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "server/clock.h"

namespace attnserve::server {

// Reads the whole file: NOT_FOUND / PERMISSION_DENIED / INTERNAL naming it.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

class FileWatcher {
 public:
  // Called on the watcher's thread with the new contents, or with the error
  // that reading them gave (the file vanished, unreadable). Not called for
  // the state at construction. Must not call back into the watcher.
  using OnChange = std::function<void(const absl::StatusOr<std::string>& contents)>;

  // Records the file's current state (the caller has just loaded it) and
  // starts the thread. `clock` must outlive the watcher.
  FileWatcher(std::string path, int64_t interval_us, Clock* clock, OnChange on_change);
  ~FileWatcher();  // Stop()s

  // Stops the thread and joins it: from then on nothing of the watcher uses
  // `clock` or calls on_change by itself (CheckNow still does). Idempotent;
  // not to be called concurrently with itself or from on_change.
  void Stop();

  // Checks the file once, now, on the caller's thread (tests; the thread
  // does the same every interval_us). Returns true when it had changed.
  bool CheckNow();

 private:
  struct Stamp {
    bool exists = false;
    uint64_t device = 0, inode = 0;
    int64_t size = 0, mtime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };
  static Stamp StampOf(const std::string& path);
  void Run();

  // Constant after construction.
  const std::string path_;
  const int64_t interval_us_;
  Clock* const clock_;
  const OnChange on_change_;

  std::mutex check_mu_;  // serializes CheckNow (thread vs. tests)
  Stamp stamp_ ABSL_GUARDED_BY(check_mu_);

  std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started by the constructor, joined by the destructor
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_FILE_WATCHER_H_
