// Loopback HTTP and promtool helpers shared by the metrics tests: a bounded
// HTTP/1.0 GET, a free port, and `promtool check metrics`.
#ifndef ATTNSERVE_TESTS_HTTP_UTIL_H_
#define ATTNSERVE_TESTS_HTTP_UTIL_H_

#include <optional>
#include <string>

namespace attnserve::testing {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// GET `target` from 127.0.0.1:`port` over HTTP/1.0 (the server closes the
// connection after the body), each socket operation bounded by 5 s. nullopt
// when nothing listens or the reply is not HTTP.
std::optional<HttpResponse> HttpGet(int port, const std::string& target);

// A port on 127.0.0.1 nothing listens on now (the kernel's pick for port 0).
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
