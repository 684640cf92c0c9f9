// Loopback HTTP and promtool helpers shared by the metrics tests: a bounded
// HTTP/1.0 GET, ports of children and a refusing port, and `promtool check metrics`.
#ifndef ATTNSERVE_TESTS_HTTP_UTIL_H_
#define ATTNSERVE_TESTS_HTTP_UTIL_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace attnserve::testing {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// GET `target` from 127.0.0.1:`port` over HTTP/1.0 (the server closes the
// connection after the body), each socket operation bounded by 5 s. nullopt
// when nothing listens or the reply is not HTTP.
std::optional<HttpResponse> HttpGet(int port, const std::string& target);

// The TCP ports process `pid` listens on at 127.0.0.1 (its socket inodes in
// /proc/PID/fd matched against LISTEN rows of /proc/net/tcp): how a test
// learns the port of a child told to listen on port 0. Empty until it listens.
std::vector<int> ListeningLoopbackPorts(pid_t pid);

// A 127.0.0.1 port this object holds bound (the kernel's pick) but never
// listens on: connecting to it is refused, and while the object lives no
// other socket can take the port, so unlike "bind, read the port, close,
// reuse" there is no window in which something else starts listening there.
class RefusingLoopbackPort {
 public:
  RefusingLoopbackPort();
  ~RefusingLoopbackPort();
  RefusingLoopbackPort(const RefusingLoopbackPort&) = delete;
  RefusingLoopbackPort& operator=(const RefusingLoopbackPort&) = delete;
  int port() const { return port_; }  // 0 when binding failed

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A 127.0.0.1 port that was free a moment ago (bound to port 0, read back,
// closed), for the few ports that must be named before their server starts:
// --metrics-port and --health-port, where 0 means off, and ports published
// by a container. Racy in principle (something else may take it before the
// server binds; the kernel hands ephemeral ports out in turn, so it is rare);
// prefer port 0 and reading the port back, and RefusingLoopbackPort for a
// port that nobody listens on.
int FreeLoopbackPort();

struct CommandResult {
  int exit_code = -1;  // -1: did not run or did not exit normally
  std::string output;  // stdout and stderr
};

// Runs `promtool check metrics` (bounded by 30 s) on exposition `text`.
CommandResult PromtoolCheckMetrics(const std::string& text);

// True when promtool is on PATH; kPromtoolHint says how to get it.
bool HavePromtool();
inline constexpr char kPromtoolHint[] =
    "promtool not found: `make deps` installs it (Debian package prometheus)";

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_HTTP_UTIL_H_
