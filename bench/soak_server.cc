#include "bench/soak_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace attnserve::bench {

namespace {
constexpr size_t kKeepOutputBytes = 64 << 10;
}  // namespace

absl::StatusOr<std::unique_ptr<SoakServer>> SoakServer::Start(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::unique_ptr<SoakServer> server(new SoakServer);
  const int rc = posix_spawn(&server->pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("cannot start ", argv[0], ": errno ", rc));
  }
  server->reader_ = std::thread(&SoakServer::ReadOutput, server.get(), fds[0]);
  // "serving gRPC on 127.0.0.1:PORT," (server/main.cc).
  const std::regex serving("serving gRPC on [^ ]*:([0-9]+)");
  std::unique_lock<std::mutex> lock(server->mu_);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::smatch match;
  while (!std::regex_search(server->output_, match, serving)) {
    if (server->output_done_ ||
        server->cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      return absl::UnavailableError(
          absl::StrCat(argv[0], " did not report its port; its output:\n", server->output_));
    }
  }
  server->port_ = std::stoi(match[1].str());
  return server;
}

SoakServer::~SoakServer() {
  if (Running()) {
    kill(pid_, SIGKILL);
    Stop();
  }
  if (reader_.joinable()) reader_.join();
}

void SoakServer::ReadOutput(int fd) {
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (n <= 0) {
      output_done_ = true;
      cv_.notify_all();
      break;
    }
    output_.append(buffer, n);
    if (output_.size() > 2 * kKeepOutputBytes) output_.erase(0, output_.size() - kKeepOutputBytes);
    cv_.notify_all();
  }
  close(fd);
}

bool SoakServer::Running() {
  std::lock_guard<std::mutex> lock(mu_);
  if (reaped_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    wait_status_ = status;
    return false;
  }
  return true;
}

SoakServer::Usage SoakServer::ReadUsage() const {
  Usage u;
  std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) u.rss_bytes = std::stoull(line.substr(6)) * 1024;
  }
  if (DIR* dir = opendir(("/proc/" + std::to_string(pid_) + "/fd").c_str())) {
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') ++u.open_fds;
    }
    closedir(dir);
  }
  return u;
}

int SoakServer::Stop() {
  if (Running()) kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (Running()) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      std::lock_guard<std::mutex> lock(mu_);
      waitpid(pid_, &wait_status_, 0);
      reaped_ = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::lock_guard<std::mutex> lock(mu_);
  return wait_status_;
}

std::string SoakServer::Output() const {
  std::lock_guard<std::mutex> lock(mu_);
  return output_;
}

std::string SoakServer::DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("killed by signal ", WTERMSIG(wait_status));
  return "unknown";
}

}  // namespace attnserve::bench
