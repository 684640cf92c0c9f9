// FUZZ_CHECK: the property checks of the fuzz targets. A failed check prints
// the condition and aborts, which libFuzzer records as a crash (and the
// replay runner as a failed test), exactly like a sanitizer report.
#ifndef ATTNSERVE_TESTS_FUZZ_FUZZ_CHECK_H_
#define ATTNSERVE_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition)                                                       \
  do {                                                                              \
    if (!(condition)) {                                                             \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__,   \
                   #condition);                                                     \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

#endif  // ATTNSERVE_TESTS_FUZZ_FUZZ_CHECK_H_
