// KvCache: the keys and values a streaming session keeps of its latest rows,
// so that each new chunk is projected alone and attends over them instead of
// the caller re-sending (and the engine re-projecting) the whole window.
//
// A ring of `capacity` rows: the row at absolute position p lives in slot
// p % capacity, so memory is capacity x row_bytes however long the stream
// runs. Each row holds the projected key then the projected value (for
// rotary models the key already rotated by its absolute position), d_model
// elements each, in the engine's attention precision (Engine::KvRowBytes).
// The engine reads and extends it while computing a sequence whose
// SequenceInput::cache points here; it is not thread-safe: one sequence of
// a session at a time (a session computes its chunks in order).
#ifndef ATTNSERVE_CORE_KV_CACHE_H_
#define ATTNSERVE_CORE_KV_CACHE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace attnserve::core {

class KvCache {
 public:
  // Allocates capacity x row_bytes (pages are touched only as rows are
  // written). Throws std::bad_alloc. REQUIRES: capacity >= 1, row_bytes >= 1.
  KvCache(uint32_t capacity, size_t row_bytes)
      : capacity_(capacity),
        row_bytes_(row_bytes),
        data_(new char[size_t{capacity} * row_bytes]) {}

  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  uint32_t capacity() const { return capacity_; }
  size_t row_bytes() const { return row_bytes_; }
  size_t bytes() const { return size_t{capacity_} * row_bytes_; }

  // Rows appended so far: the absolute position of the next row.
  uint64_t positions() const { return positions_; }
  // Rows held: the latest min(positions, capacity).
  uint32_t rows() const {
    return static_cast<uint32_t>(std::min<uint64_t>(positions_, capacity_));
  }

  // The slot of absolute position `p`. REQUIRES: p is held, or is being
  // written by the engine before Advance.
  char* Row(uint64_t p) { return data_.get() + (p % capacity_) * row_bytes_; }
  const char* Row(uint64_t p) const { return data_.get() + (p % capacity_) * row_bytes_; }

  // The engine wrote rows [positions, positions + n) (the last capacity of
  // them, when n > capacity).
  void Advance(uint32_t n) { positions_ += n; }

 private:
  const uint32_t capacity_;
  const size_t row_bytes_;
  std::unique_ptr<char[]> data_;
  uint64_t positions_ = 0;
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_KV_CACHE_H_
