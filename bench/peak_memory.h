// PeakMemoryWindow: how far this process's resident memory rises above its
// level when the window opens (the "peak extra memory" of the code run while
// it is open). Not thread-safe; at most one window per process at a time,
// because it resets the process-wide peak.
//
// Method (Linux): opening the window returns free heap pages to the kernel
// (malloc_trim), resets the peak resident set size ("echo 5 >
// /proc/self/clear_refs", which sets VmHWM to the current VmRSS) and reads
// VmRSS as the baseline; PeakExtraBytes() is VmHWM - baseline. Everything the
// code touches counts: its buffers, its outputs, oneDNN scratchpads, thread
// stacks. Memory allocated but never touched does not (it is not resident).
#ifndef ATTNSERVE_BENCH_PEAK_MEMORY_H_
#define ATTNSERVE_BENCH_PEAK_MEMORY_H_

#include <cstddef>

namespace attnserve::bench {

class PeakMemoryWindow {
 public:
  PeakMemoryWindow();

  // False when /proc/self/clear_refs could not be written: the peak is then
  // the process's lifetime peak, which may include earlier setup.
  bool reset_ok() const { return reset_ok_; }
  size_t baseline_bytes() const { return baseline_bytes_; }
  // Peak resident bytes since the window opened, minus the baseline (>= 0).
  size_t PeakExtraBytes() const;

 private:
  bool reset_ok_ = false;
  size_t baseline_bytes_ = 0;
};

// Reads one "Name:   N kB" field of /proc/self/status, in bytes; 0 if absent.
size_t ProcStatusBytes(const char* field);

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_PEAK_MEMORY_H_
