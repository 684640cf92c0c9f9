#include "server/file_watcher.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = absl::StrCat("cannot read ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES) return absl::PermissionDeniedError(why);
    return absl::InternalError(why);
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("error reading ", path));
  return out.str();
}

FileWatcher::FileWatcher(std::string path, int64_t interval_us, Clock* clock, OnChange on_change)
    : path_(std::move(path)),
      interval_us_(interval_us),
      clock_(clock),
      on_change_(std::move(on_change)) {
  {
    std::lock_guard<std::mutex> lock(check_mu_);
    stamp_ = StampOf(path_);
  }
  thread_ = std::thread([this] { Run(); });
}

FileWatcher::~FileWatcher() { Stop(); }

void FileWatcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

FileWatcher::Stamp FileWatcher::StampOf(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Stamp{};  // follows symlinks, as readers do
  return Stamp{true, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
               static_cast<int64_t>(st.st_size),
               int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
}

bool FileWatcher::CheckNow() {
  std::lock_guard<std::mutex> lock(check_mu_);
  // The stamp is taken before reading: a write that lands after the read
  // changes the stamp again, so the next check reads the final contents.
  const Stamp now = StampOf(path_);
  if (now == stamp_) return false;
  stamp_ = now;
  on_change_(ReadWholeFile(path_));
  return true;
}

void FileWatcher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  int64_t next_us = clock_->NowMicros() + interval_us_;
  while (!stop_) {
    if (clock_->NowMicros() < next_us) {
      clock_->WaitUntil(stop_cv_, lock, next_us);
      continue;
    }
    lock.unlock();
    CheckNow();
    lock.lock();
    next_us = clock_->NowMicros() + interval_us_;
  }
}

}  // namespace attnserve::server
