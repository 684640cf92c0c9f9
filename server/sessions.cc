#include "server/sessions.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

SessionTable::Lease::~Lease() { table_->Release(id_); }
void SessionTable::Lease::Touch() { table_->Touch(id_); }
void SessionTable::Lease::SetBusy(bool busy) { table_->SetBusy(id_, busy); }

SessionTable::SessionTable(const SessionOptions& options, Clock* clock, Metrics* metrics)
    : options_(options), clock_(clock), metrics_(metrics) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    UpdateGauges();
  }
  if (options_.idle_timeout_us > 0) idle_thread_ = std::thread([this] { IdleLoop(); });
}

SessionTable::~SessionTable() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (idle_thread_.joinable()) idle_thread_.join();
}

absl::StatusOr<std::unique_ptr<SessionTable::Lease>> SessionTable::Open(
    uint64_t bytes, std::weak_ptr<Listener> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  if (entries_.size() >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no room for another session: ", entries_.size(), " are open, the server's limit "
        "(--max-sessions); retry later or on another replica"));
  }
  if (bytes > options_.cache_bytes - std::min(reserved_, options_.cache_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no room for this session's cache of ", bytes, " bytes: open sessions reserve ",
        reserved_, " of the server's ", options_.cache_bytes,
        " (--session-cache-bytes); a smaller window or max_tokens needs less"));
  }
  const uint64_t id = next_id_++;
  auto lease = std::unique_ptr<Lease>(new Lease(this, id, bytes));
  Entry& e = entries_[id];
  e.bytes = bytes;
  e.last_active_us = clock_->NowMicros();
  e.listener = std::move(listener);
  reserved_ += bytes;
  UpdateGauges();
  cv_.notify_all();  // a new deadline for the idle thread
  return lease;
}

void SessionTable::Release(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  reserved_ -= it->second.bytes;
  entries_.erase(it);
  UpdateGauges();
}

void SessionTable::Touch(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  // Only later: the idle thread need not wake (it re-checks at the old deadline).
  it->second.last_active_us = clock_->NowMicros();
}

void SessionTable::SetBusy(uint64_t id, bool busy) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  it->second.busy = busy;
  // Idle time counts from the end of work. No wake-up either: while any
  // entry is busy the idle thread looks again every idle timeout.
  it->second.last_active_us = clock_->NowMicros();
}

void SessionTable::StartDraining() {
  std::vector<std::shared_ptr<Listener>> open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, e] : entries_) {
      if (auto l = e.listener.lock()) open.push_back(std::move(l));
    }
  }
  for (auto& l : open) l->OnDrain();
}

uint64_t SessionTable::reserved_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_;
}

size_t SessionTable::open_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

void SessionTable::UpdateGauges() {
  metrics_->SetSessions(static_cast<double>(entries_.size()), static_cast<double>(reserved_));
}

// Wakes at the earliest idle deadline (or when activity moves one), tells
// each session whose idle time has run out, once, outside the lock.
void SessionTable::IdleLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const int64_t now = clock_->NowMicros();
    int64_t next = std::numeric_limits<int64_t>::max();
    struct Expired {
      uint64_t id;
      std::shared_ptr<Listener> listener;
      int64_t idle_us;
    };
    std::vector<Expired> expired;
    for (auto& [id, e] : entries_) {
      if (e.told) continue;
      if (e.busy) {  // idle at the earliest one timeout after its work ends
        next = std::min(next, now + options_.idle_timeout_us);
        continue;
      }
      const int64_t deadline = e.last_active_us + options_.idle_timeout_us;
      if (deadline > now) {
        next = std::min(next, deadline);
        continue;
      }
      e.told = true;
      if (auto l = e.listener.lock()) expired.push_back({id, std::move(l), now - e.last_active_us});
    }
    if (!expired.empty()) {
      lock.unlock();
      std::vector<uint64_t> again;
      for (Expired& x : expired) {
        if (!x.listener->OnIdle(x.idle_us)) again.push_back(x.id);
      }
      expired.clear();  // the last reference to a session's listener may go here, unlocked
      lock.lock();
      for (uint64_t id : again) {  // ask again one idle timeout from now
        auto it = entries_.find(id);
        if (it == entries_.end()) continue;
        it->second.told = false;
        it->second.last_active_us = clock_->NowMicros();
      }
      continue;
    }
    clock_->WaitUntil(cv_, lock, next);
  }
}

}  // namespace attnserve::server
