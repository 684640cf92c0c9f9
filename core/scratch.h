// ScratchBuffer: a reusable, 64-byte aligned, uninitialized byte buffer for
// the oneDNN engine's per-batch intermediates (packed inputs, Q/K/V, context,
// score tiles). Not thread-safe: one owner uses it at a time.
#ifndef ATTNSERVE_CORE_SCRATCH_H_
#define ATTNSERVE_CORE_SCRATCH_H_

#include <cstddef>
#include <memory>
#include <new>

namespace attnserve::core {

class ScratchBuffer {
 public:
  // Returns at least `bytes` bytes, reusing the current allocation when it is
  // large enough. Contents are unspecified (not zeroed: a fresh buffer is
  // written before it is read, and zeroing would touch every page twice).
  // Invalidates pointers returned earlier when it grows. Throws
  // std::bad_alloc when it cannot grow; the buffer is then empty (capacity
  // 0, no allocation), never a stale capacity over a freed pointer.
  void* Reserve(size_t bytes) {
    if (bytes > capacity_) {
      // Free first: never hold the old and the new at once.
      data_.reset();
      capacity_ = 0;
      // The nothrow form, throwing here: the same std::bad_alloc, also under
      // AddressSanitizer, whose throwing operator new aborts the process on
      // an impossible size instead (with allocator_may_return_null=1, as
      // `make asan` runs, the nothrow form returns null).
      std::byte* p = new (std::align_val_t{kAlign}, std::nothrow) std::byte[bytes];
      if (p == nullptr) throw std::bad_alloc();
      data_.reset(p);
      capacity_ = bytes;
    }
    return data_.get();
  }
  template <typename T>
  T* ReserveAs(size_t count) {
    return static_cast<T*>(Reserve(count * sizeof(T)));
  }

  size_t capacity() const { return capacity_; }

  // Frees the allocation when it is larger than `max_bytes`, so one huge
  // batch does not pin its memory for the life of the engine.
  void Trim(size_t max_bytes) {
    if (capacity_ > max_bytes) {
      data_.reset();
      capacity_ = 0;
    }
  }

 private:
  static constexpr size_t kAlign = 64;  // a cache line; oneDNN's preference
  struct Free {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{kAlign}); }
  };
  std::unique_ptr<std::byte[], Free> data_;
  size_t capacity_ = 0;
};

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_SCRATCH_H_
