// The heap allocator the attnserve binary runs on, for its startup log.
//
// attnserve links Debian's jemalloc (CMake option ATTN_JEMALLOC, on by default
// outside sanitizer and fuzz builds): under hours of mixed request sizes
// glibc's malloc kept creeping up (+14% RSS over ten minutes after warm-up,
// never returned), while jemalloc's decay returns freed pages and held steady
// (README, "Sanitizers, fuzzing and soak"). Thread-safe.
#ifndef ATTNSERVE_SERVER_ALLOCATOR_H_
#define ATTNSERVE_SERVER_ALLOCATOR_H_

#include <string>

namespace attnserve::server {

// "jemalloc 5.3.0-0-g54eaed1d8b56..." or "glibc malloc".
std::string AllocatorName();

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_ALLOCATOR_H_
