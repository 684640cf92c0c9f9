// Page allocation for the engine's large outputs (attention weights), and an
// allocator that leaves trivial elements uninitialized. Internal to core/ and
// its callers that hold WeightsMatrix; thread-safe (stateless).
#ifndef ATTNSERVE_CORE_PAGE_ALLOCATOR_H_
#define ATTNSERVE_CORE_PAGE_ALLOCATOR_H_

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

namespace attnserve::core {

// An allocator whose value-initialization (vector::resize, the size
// constructor) leaves trivial elements uninitialized, so a large buffer that
// is about to be overwritten is not first zero-filled (a whole pass over its
// memory).
// Memory for large outputs: at or above kHugePageThreshold bytes it is mapped
// directly, aligned to 2 MiB and advised for transparent huge pages (one page
// fault per 2 MiB instead of 512, which is most of the cost of returning
// hundreds of MiB of weights); smaller sizes come from operator new.
inline constexpr size_t kHugePageThreshold = size_t{4} << 20;
// Throws std::bad_alloc when the memory cannot be had.
void* AllocatePages(size_t bytes, size_t align);
void FreePages(void* p, size_t bytes, size_t align) noexcept;

template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() noexcept = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    return static_cast<T*>(AllocatePages(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { FreePages(p, n * sizeof(T), alignof(T)); }

  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;  // default-, not value-initialized
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T, typename U>
bool operator==(const DefaultInitAllocator<T>&, const DefaultInitAllocator<U>&) noexcept {
  return true;
}

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_PAGE_ALLOCATOR_H_
