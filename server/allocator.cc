#include "server/allocator.h"

#ifdef ATTN_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#ifdef ATTN_JEMALLOC
// jemalloc reads this at its first allocation (MALLOC_CONF in the environment
// is applied after it, so operators can still override). Without a
// background thread, jemalloc returns freed pages to the kernel only inside
// later allocator calls: a server that goes idle after a burst would keep the
// burst's memory. With it, freed pages go back after the decay time (10 s).
extern "C" {
// NOLINTNEXTLINE: the name and type are jemalloc's interface.
const char* malloc_conf = "background_thread:true";
}
#endif

namespace attnserve::server {

std::string AllocatorName() {
#ifdef ATTN_JEMALLOC
  const char* version = nullptr;
  size_t size = sizeof(version);
  // Debian's jemalloc is built without a symbol prefix: mallctl is the real
  // entry point, and malloc/free in this process are jemalloc's.
  if (mallctl("version", &version, &size, nullptr, 0) == 0 && version != nullptr) {
    return std::string("jemalloc ") + version;
  }
  return "jemalloc (version unknown)";
#else
  return "glibc malloc";
#endif
}

}  // namespace attnserve::server
