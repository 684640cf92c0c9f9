#include "bench/peak_memory.h"

#include <malloc.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

namespace attnserve::bench {

size_t ProcStatusBytes(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(status, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::stoull(line.substr(n + 1)) * 1024;  // the kernel reports kB
    }
  }
  return 0;
}

PeakMemoryWindow::PeakMemoryWindow() {
  // Free heap pages kept by malloc would be reused without raising RSS and
  // hide part of the peak; hand them back first.
  malloc_trim(0);
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    reset_ok_ = std::fputs("5", f) >= 0;
    reset_ok_ = (std::fclose(f) == 0) && reset_ok_;
  }
  baseline_bytes_ = ProcStatusBytes("VmRSS");
}

size_t PeakMemoryWindow::PeakExtraBytes() const {
  const size_t peak = ProcStatusBytes("VmHWM");
  return peak > baseline_bytes_ ? peak - baseline_bytes_ : 0;
}

}  // namespace attnserve::bench
