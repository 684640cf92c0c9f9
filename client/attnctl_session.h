// `attnctl session`: streams the rows of a .npy file through an
// Attention.Session a chunk at a time, one line per chunk (position, rows,
// latency, the server's queue and compute time) and a summary (latency p50
// and p99, total time); with --verify each chunk is checked against a
// one-shot Attend of the rows so far with mask {causal, window}.
// Stateless functions; thread-safe.
#ifndef ATTNSERVE_CLIENT_ATTNCTL_SESSION_H_
#define ATTNSERVE_CLIENT_ATTNCTL_SESSION_H_

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "client/attention_client.h"

namespace attnserve::client {

struct SessionFlags {
  std::string npy_path;      // 2-D float32 rows x d_model
  uint32_t chunk_rows = 0;   // rows per append (the last chunk may be shorter); >= 1
  uint32_t window = 0;       // SessionOpen.window: 0 = every earlier row
  std::string weights = "none";  // none | per-head | mean
  uint64_t max_tokens = 0;   // SessionOpen.max_tokens: 0 = no limit of the session's own
  std::string model;         // "" = the server's default model
  bool verify = false;
};

// Adds the flags above to `command` (--chunk required).
void RegisterSessionFlags(CLI::App* command, SessionFlags& flags);

// Runs the subcommand; returns attnctl's exit code: 0 done (and, with
// --verify, every checked chunk within tolerance); 1 a server error or a
// mismatch; 2 a bad file or flag.
int RunSession(AttentionClient& client, const SessionFlags& flags);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_ATTNCTL_SESSION_H_
