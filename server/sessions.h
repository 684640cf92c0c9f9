// SessionTable: the open streaming sessions of a server (Attention.Session)
// and the limits they share: how many may be open, how many bytes of key and
// value caches they may reserve in all, and how long one may sit idle.
//
// A session reserves its largest cache when it opens and keeps the
// reservation until it ends, so the table never promises more memory than
// --session-cache-bytes: an open that does not fit is refused
// (RESOURCE_EXHAUSTED, naming the limit and what is in use); nothing open is
// ever evicted to make room. Idle sessions are ended by the table's thread on
// the server's clock: one that has received nothing for the idle timeout and
// computes nothing is told (its Listener's OnIdle) and ends itself.
// Thread-safe.
#ifndef ATTNSERVE_SERVER_SESSIONS_H_
#define ATTNSERVE_SERVER_SESSIONS_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "server/clock.h"
#include "server/metrics.h"

namespace attnserve::server {

struct SessionOptions {
  uint32_t max_sessions = 1024;              // --max-sessions, >= 1
  uint64_t cache_bytes = uint64_t{1} << 30;  // --session-cache-bytes, >= 1
  int64_t idle_timeout_us = 300'000'000;     // --session-idle-timeout-s; 0 = never
};

class SessionTable {
 public:
  // What a session hears from the table. Called from the table's thread
  // without its lock; a session may end (and its Lease go) meanwhile, which
  // the implementation must tolerate (hold it through a shared_ptr).
  class Listener {
   public:
    virtual ~Listener() = default;
    // Nothing received for `idle_us` and nothing computing: end the session
    // (true). False: not yet (a reply is still being written; it may be
    // about to end, or stuck on a client that stopped reading): the table
    // asks again after another idle timeout.
    virtual bool OnIdle(int64_t idle_us) = 0;
    // The server drains: answer the chunks received, then end the session.
    virtual void OnDrain() = 0;
  };

  // One open session's reservation; releasing it (destruction) frees its
  // bytes and its place. Activity calls come from the session's reactor.
  class Lease {
   public:
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    uint64_t bytes() const { return bytes_; }
    // A message arrived: the idle time restarts.
    void Touch();
    // While busy (a chunk computing, a reply being written) the session is
    // not idle.
    void SetBusy(bool busy);

   private:
    friend class SessionTable;
    Lease(SessionTable* table, uint64_t id, uint64_t bytes) : table_(table), id_(id), bytes_(bytes) {}
    SessionTable* const table_;
    const uint64_t id_;
    const uint64_t bytes_;
  };

  // `clock` and `metrics` must outlive the table. Starts the idle thread
  // when options.idle_timeout_us > 0.
  SessionTable(const SessionOptions& options, Clock* clock, Metrics* metrics);
  ~SessionTable();  // joins the idle thread; every Lease must be gone

  // Reserves `bytes` of cache for a new session of `model`:
  // RESOURCE_EXHAUSTED when max_sessions are open or the bytes do not fit
  // beside the reservations of the open ones. `listener` is kept weakly.
  absl::StatusOr<std::unique_ptr<Lease>> Open(uint64_t bytes,
                                              std::weak_ptr<Listener> listener);

  // Tells every open session the server drains (OnDrain, outside the lock).
  void StartDraining();

  const SessionOptions& options() const { return options_; }
  uint64_t reserved_bytes() const;
  size_t open_sessions() const;

 private:
  struct Entry {
    uint64_t bytes = 0;
    int64_t last_active_us = 0;
    bool busy = false;
    bool told = false;  // OnIdle already sent
    std::weak_ptr<Listener> listener;
  };

  void Release(uint64_t id);
  void Touch(uint64_t id);
  void SetBusy(uint64_t id, bool busy);
  void IdleLoop();
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SessionOptions options_;
  Clock* const clock_;
  Metrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // stopping_, or an entry's idle time changed
  std::unordered_map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread idle_thread_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_SESSIONS_H_
