// serve_bench --tls / --token: what TLS, mTLS and bearer tokens cost the
// server, measured in one run against real attnserve processes on 127.0.0.1
// (one per mode, all started up front): certificates made by
// tests/make_test_certs.sh (openssl) and a token made by client/token.h in a
// temporary directory. Modes and levels are interleaved over several rounds
// (the mode order rotates each round) and the median of the rounds is
// reported, so a burst of load from elsewhere on a shared machine lands on
// every mode alike. Prints a Markdown table with each figure's ratio to
// plaintext and the targets: TLS keeps >= 90% of plaintext's
// requests/s at concurrency 64, and adds <= 0.15 ms to p50 at concurrency 1.
#ifndef ATTNSERVE_BENCH_SERVE_BENCH_TLS_H_
#define ATTNSERVE_BENCH_SERVE_BENCH_TLS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attnserve::bench {

struct TlsBenchOptions {
  // Modes: plaintext always; --tls adds TLS and mTLS; --token adds a bearer
  // token (plaintext + token alone; with --tls: TLS + token, mTLS + token).
  bool tls = false;
  bool token = false;
  int rounds = 3;          // each (mode, level) is measured this many times
  double seconds = 5;      // per measurement
  uint32_t length = 128;   // L of every request
  std::vector<int> levels = {1, 64};  // closed-loop concurrency
  std::string server_binary;
};

// Runs the comparison and prints it on stdout (progress on stderr). Returns
// 0 when every call was answered OK, 1 otherwise or when a server or the
// certificates could not be made. The PASS/FAIL of the targets is printed,
// not returned: the figures depend on the machine and its load.
int RunTlsComparison(const TlsBenchOptions& options);

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_SERVE_BENCH_TLS_H_
