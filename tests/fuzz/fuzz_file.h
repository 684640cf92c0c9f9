// MemoryFile: hands fuzz input to parsers that take a path (the safetensors
// loader, the .npy reader) without touching the disk: an anonymous memfd
// whose contents are replaced for each input, opened by the parser as
// /proc/self/fd/N. One per fuzz target; not thread-safe (libFuzzer calls
// LLVMFuzzerTestOneInput from one thread).
#ifndef ATTNSERVE_TESTS_FUZZ_FUZZ_FILE_H_
#define ATTNSERVE_TESTS_FUZZ_FUZZ_FILE_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace attnserve::fuzz {

class MemoryFile {
 public:
  explicit MemoryFile(const char* name) : fd_(memfd_create(name, 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  // Replaces the contents with [data, data + size); returns the path.
  const std::string& Set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size)) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace attnserve::fuzz

#endif  // ATTNSERVE_TESTS_FUZZ_FUZZ_FILE_H_
